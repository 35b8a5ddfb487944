"""Advisory lock keys: one place for every key this service takes, passed to SQL as
parameters. Each is a bigint; pg_locks shows it split as classid (high 32 bits) and objid
(low 32 bits), with objsubid 1."""

from __future__ import annotations

# "mana" "ai": migrations run one at a time, so replicas booting together do not race.
MIGRATE = 0x6D616E61_6169
# "mana" "ld": one applier (leader) per database; standbys wait on it.
LEADER = 0x6D616E61_6C64
# One replay at a time; journal pruning honours the hold of a session holding it.
REPLAY = 1835094640
# "mana" "db": the doorbell is armed while the parked consumer holds this exclusively (on its
# work connection); each committing writer of ours tries it shared. The trigger function of
# schema/migrations/0010_armed_doorbell.sql spells the number out: a trigger body takes no
# bound parameter (tests/test_doorbell.py holds the two equal).
DOORBELL = 0x6D616E61_6462
