-- The current snapshot, as text: a safe watermark taken before a chunk's keys are read.
SELECT pg_current_snapshot()::text
