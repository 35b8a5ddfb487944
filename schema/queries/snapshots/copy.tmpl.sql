-- A catch-up window's records that had no stored clocks when it read them and whose fold is
-- visible: nothing of them is stored anywhere (their clocks, snapshot and due entry are
-- written together, by write.tmpl.sql or here), so they go in by COPY, a plain insert
-- without the executor's per-row upsert (consumer/apply.py `_copy_fresh`). Should a row
-- exist after all (snapshots from before the clocks, such as upstream's; a second writer the
-- checkpoint's fence has not yet stopped), the COPY fails on the key and the window is
-- applied again chunk by chunk. Such a record whose fold is not visible (deleted) goes with
-- the upserted records instead: their statement deletes its snapshot and due entry, should
-- any be stored.
-- One statement per part. The caller first locks the tables in the one order
-- (replay/lock_live.tmpl.sql), so the parts may then run in any order.
-- part clocks
COPY {table} (kind, user_id, record_id, state) FROM STDIN (FORMAT BINARY)
-- part due
COPY {table} (user_id, mission_id, due_at) FROM STDIN (FORMAT BINARY)
-- part missions
COPY {table} (user_id, mission_id, record, last_applied_at) FROM STDIN (FORMAT BINARY)
-- part agents
COPY {table} (user_id, agent_id, record, last_applied_at) FROM STDIN (FORMAT BINARY)
