"""Tests that need the local Kubernetes control plane (marker `cluster`)."""
