-- Fence a claim by the leader epoch: the checkpoint row, share-locked until the claim
-- commits, so a new leader's take_leadership() (an UPDATE of this row) waits for the claim,
-- and a claim after it finds no row. No row: this process is no longer the leader.
SELECT 1 FROM mana_ai.checkpoint
WHERE name = 'projection' AND leader_epoch = %(epoch)s
FOR SHARE
