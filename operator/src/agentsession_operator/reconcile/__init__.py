"""Pure reconcile logic: observed state + spec + clock -> plan. No I/O, no kopf, no clock reads."""
