-- The runner's write-back, first statement: the occurrence is done if this attempt still
-- holds the lease (as ledger/done.sql), the agent's token usage is counted when it is done
-- and %(tokens)s > 0, and the mission's field clocks come back (the write-back stamps its
-- fields no earlier than these), in one round trip. done is false when the lease was lost:
-- the caller rolls the transaction back.
WITH done AS (
    UPDATE mana_ai.dispatch_ledger
    SET state = 'done', outcome = %(outcome)s, iteration_id = %(iteration_id)s,
        finished_at = now(), wake_at = NULL  -- lease_owner stays: who ran it
    WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND due_at = %(due_at)s
      AND state = 'running' AND lease_owner = %(owner)s AND attempts = %(attempt)s
    RETURNING 1
), used AS (
    INSERT INTO mana_ai.token_usage (user_id, agent_id, tokens)
    SELECT %(user_id)s, %(agent_id)s::text, %(tokens)s::int FROM done
    WHERE %(agent_id)s::text IS NOT NULL AND %(tokens)s::int > 0
)
SELECT EXISTS (SELECT 1 FROM done),
       (SELECT c.state FROM mana_ai.record_clocks c
        WHERE c.kind = 'mission' AND c.user_id = %(user_id)s AND c.record_id = %(mission_id)s)
