"""Running a study: plan, units, executors, resume, timings, controls."""
