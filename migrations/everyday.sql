-- opsd schema migration 3: everyday use (SPEC §12). Labels, named queues,
-- hold/release and dependencies between operations.

-- Shown by `list`, filtered by `list --label`.
ALTER TABLE operations ADD COLUMN label TEXT;
-- The named queue it waits in (table `queues`).
ALTER TABLE operations ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
-- 1 while held (`--hold`) until `opsd release`.
ALTER TABLE operations ADD COLUMN held INTEGER NOT NULL DEFAULT 0 CHECK (held IN (0,1));
-- Dependencies not met yet (rows of operation_dependencies in state
-- 'waiting'); the claim takes only rows with 0.
ALTER TABLE operations ADD COLUMN waiting_for INTEGER NOT NULL DEFAULT 0
    CHECK (waiting_for >= 0);

-- Named queues, changed at run time (`opsd queue ...`): a paused queue
-- starts nothing new; `parallel` caps how many of its operations run at
-- once (NULL: only the per-type limits apply).
CREATE TABLE IF NOT EXISTS queues (
    name     TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    paused   INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0,1)),
    parallel INTEGER CHECK (parallel IS NULL OR parallel >= 1),
    created_at TEXT NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO queues (name, created_at)
    VALUES ('default', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

-- `--after` (any_outcome = 0: needs `completed`) and `--after-any`
-- (any_outcome = 1: needs an end). state: waiting, met, or broken (the
-- dependency failed or was cancelled; the dependent was cancelled).
CREATE TABLE IF NOT EXISTS operation_dependencies (
    operation_id TEXT NOT NULL REFERENCES operations(operation_id) ON DELETE CASCADE,
    depends_on   TEXT NOT NULL REFERENCES operations(operation_id) ON DELETE CASCADE,
    any_outcome  INTEGER NOT NULL DEFAULT 0 CHECK (any_outcome IN (0,1)),
    state        TEXT NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting','met','broken')),
    PRIMARY KEY (operation_id, depends_on)
) WITHOUT ROWID;
-- When an operation ends, its dependents are found through this.
CREATE INDEX IF NOT EXISTS idx_dependencies_on
    ON operation_dependencies(depends_on) WHERE state = 'waiting';

-- The claim's index now leaves out held rows and rows whose dependencies
-- are not met, so neither is walked on every claim round.
DROP INDEX IF EXISTS idx_operations_runnable;
CREATE INDEX idx_operations_runnable
    ON operations(operation_type, priority DESC, created_at, operation_id)
    WHERE status = 'pending' AND held = 0 AND waiting_for = 0;

-- Short ids: the 8-hex tail `watch` shows (SPEC §12).
CREATE INDEX IF NOT EXISTS idx_operations_tail
    ON operations(substr(operation_id, -8));
-- `list --label`.
CREATE INDEX IF NOT EXISTS idx_operations_label
    ON operations(label) WHERE label IS NOT NULL;
-- Running operations per queue (parallel limits) and `clean` by age.
CREATE INDEX IF NOT EXISTS idx_operations_completed
    ON operations(completed_at) WHERE completed_at IS NOT NULL;

-- `stop_reason` gains `dependency` (an `--after` dependency failed or was
-- cancelled). SQLite cannot alter a CHECK constraint in place; widening
-- one by editing the stored table definition is the documented way
-- (https://sqlite.org/lang_altertable.html#otheralter): every existing
-- row satisfies the wider check. It comes last: ALTER TABLE works from the
-- schema as loaded, and the daemon reopens its connection (and bumps
-- the schema cookie) after migrating, so the wider check applies.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
   SET sql = replace(sql, '''crash'',''error'')', '''crash'',''error'',''dependency'')')
 WHERE type = 'table' AND name = 'operations';
PRAGMA writable_schema = OFF;
