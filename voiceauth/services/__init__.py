"""Services composed from the building blocks: cohort cache, the one enrolment path, bulk enrolment."""
