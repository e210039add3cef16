-- opsd PostgreSQL migration 2: the columns and tables of SQLite's
-- everyday-use migration (SPEC §12), so `psql` shows what `sqlite3` shows.
-- (Applied once; the PostgreSQL backend implements labels, queues, hold and
-- dependencies on these tables, like SQLite.)

ALTER TABLE operations ADD COLUMN IF NOT EXISTS label TEXT;
ALTER TABLE operations ADD COLUMN IF NOT EXISTS queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE operations ADD COLUMN IF NOT EXISTS held INTEGER NOT NULL DEFAULT 0
    CHECK (held IN (0,1));
ALTER TABLE operations ADD COLUMN IF NOT EXISTS waiting_for INTEGER NOT NULL DEFAULT 0
    CHECK (waiting_for >= 0);

CREATE TABLE IF NOT EXISTS queues (
    name     TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    paused   INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0,1)),
    parallel INTEGER CHECK (parallel IS NULL OR parallel >= 1),
    created_at TEXT NOT NULL
);
INSERT INTO queues (name, created_at)
    VALUES ('default', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    ON CONFLICT (name) DO NOTHING;

CREATE TABLE IF NOT EXISTS operation_dependencies (
    operation_id TEXT NOT NULL REFERENCES operations(operation_id) ON DELETE CASCADE,
    depends_on   TEXT NOT NULL REFERENCES operations(operation_id) ON DELETE CASCADE,
    any_outcome  INTEGER NOT NULL DEFAULT 0 CHECK (any_outcome IN (0,1)),
    state        TEXT NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting','met','broken')),
    PRIMARY KEY (operation_id, depends_on)
);
CREATE INDEX IF NOT EXISTS idx_dependencies_on
    ON operation_dependencies(depends_on) WHERE state = 'waiting';
CREATE INDEX IF NOT EXISTS idx_operations_label
    ON operations(label) WHERE label IS NOT NULL;

-- `stop_reason` gains `dependency`.
ALTER TABLE operations DROP CONSTRAINT IF EXISTS operations_stop_reason_check;
ALTER TABLE operations ADD CONSTRAINT operations_stop_reason_check
    CHECK (stop_reason IS NULL
           OR stop_reason IN ('user','parent','shutdown','crash','error','dependency'));
