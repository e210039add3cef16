-- opsd schema, version 1. Applied by the daemon at start-up; the version is
-- tracked with PRAGMA user_version. Later versions are applied in order
-- (MIGRATIONS in src/store/sqlite/migrate.rs): version 2 adds the columns
-- and table of several hosts (claimed_by, lease_expires_at, `hosts`);
-- version 3, migrations/everyday.sql, adds labels, named queues (table
-- `queues`), hold, and dependencies (table `operation_dependencies`,
-- stop reason `dependency`); version 4, migrations/checks.sql, rewrites
-- the `IN (...)` lists of the CHECK constraints below as `OR` chains
-- (same values; SQLite built a table per write for each list).
-- Timestamps are RFC 3339 UTC text with microseconds (fixed width, so they
-- sort as text). JSON columns hold valid JSON (checked).

CREATE TABLE IF NOT EXISTS operations (
    operation_id        TEXT PRIMARY KEY NOT NULL,
    parent_operation_id TEXT REFERENCES operations(operation_id),
    operation_type      TEXT NOT NULL
        CHECK (operation_type IN ('dummy','command','training','backtest','pipeline')),
    status              TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending','resuming','running','completed','failed','cancelled')),
    stop_reason         TEXT
        CHECK (stop_reason IS NULL OR stop_reason IN ('user','parent','shutdown','crash','error')),
    priority            INTEGER NOT NULL DEFAULT 0,
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    run_after           TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    completed_at        TEXT,
    updated_at          TEXT NOT NULL,
    progress_percent    REAL NOT NULL DEFAULT 0 CHECK (progress_percent BETWEEN 0 AND 100),
    progress_message    TEXT,
    current_step        TEXT,
    steps_completed     INTEGER,
    steps_total         INTEGER,
    items_processed     INTEGER,
    items_total         INTEGER,
    eta_seconds         REAL,
    progress_context    TEXT CHECK (progress_context IS NULL OR json_valid(progress_context)),
    metadata            TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    result_summary      TEXT CHECK (result_summary IS NULL OR json_valid(result_summary)),
    error_message       TEXT,
    warnings            TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(warnings)),
    errors              TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(errors)),
    idempotency_key     TEXT,
    -- Share of the parent's progress this child covers, in percent of the
    -- parent (SPEC §3); NULL when the child shares the parent equally.
    phase_start         REAL CHECK (phase_start IS NULL OR phase_start BETWEEN 0 AND 100),
    phase_end           REAL CHECK (phase_end IS NULL OR phase_end BETWEEN 0 AND 100),
    -- 1 when this child failing fails its parent.
    fail_parent         INTEGER NOT NULL DEFAULT 0 CHECK (fail_parent IN (0,1)),
    -- GPUs asked for at submit, and the ones assigned while running (JSON array).
    gpus_requested      INTEGER NOT NULL DEFAULT 0 CHECK (gpus_requested >= 0),
    gpus_assigned       TEXT CHECK (gpus_assigned IS NULL OR json_valid(gpus_assigned))
);

-- Idempotency keys are unique when set.
CREATE UNIQUE INDEX IF NOT EXISTS idx_operations_idempotency_key
    ON operations(idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The claim query's index: each type has its own queue (its own concurrency
-- limit), and the claim is `WHERE status = 'pending' AND operation_type = ?
-- ORDER BY priority DESC, created_at, operation_id`: an index walk, no sort.
CREATE INDEX IF NOT EXISTS idx_operations_runnable
    ON operations(operation_type, priority DESC, created_at, operation_id)
    WHERE status = 'pending';

-- Start-up recovery looks for operations stopped by a shutdown or a crash.
CREATE INDEX IF NOT EXISTS idx_operations_recoverable
    ON operations(stop_reason) WHERE stop_reason IN ('shutdown','crash');

-- Filters of `opsd list` and the children of a parent.
CREATE INDEX IF NOT EXISTS idx_operations_status_created
    ON operations(status, created_at);
CREATE INDEX IF NOT EXISTS idx_operations_type_created
    ON operations(operation_type, created_at);
CREATE INDEX IF NOT EXISTS idx_operations_parent
    ON operations(parent_operation_id) WHERE parent_operation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_operations_created
    ON operations(created_at);

CREATE TABLE IF NOT EXISTS operation_metrics (
    operation_id TEXT NOT NULL REFERENCES operations(operation_id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL CHECK (seq >= 1),
    recorded_at  TEXT NOT NULL,
    data         TEXT NOT NULL CHECK (json_valid(data)),
    PRIMARY KEY (operation_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS operation_checkpoints (
    operation_id         TEXT PRIMARY KEY NOT NULL
        REFERENCES operations(operation_id) ON DELETE CASCADE,
    checkpoint_type      TEXT NOT NULL
        CHECK (checkpoint_type IN ('periodic','cancellation','shutdown','failure')),
    created_at           TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (json_valid(state)),
    artifacts_path       TEXT,
    state_size_bytes     INTEGER NOT NULL DEFAULT 0,
    artifacts_size_bytes INTEGER NOT NULL DEFAULT 0,
    -- The progress and metric cursor at the time of the checkpoint, so a
    -- resumed operation continues both from there.
    progress_percent     REAL,
    metrics_seq          INTEGER NOT NULL DEFAULT 0
);

-- What is waiting or running, with a progress column for people.
CREATE VIEW IF NOT EXISTS active_operations AS
SELECT operation_id,
       operation_type,
       status,
       priority,
       printf('%5.1f%%', progress_percent)
           || CASE WHEN progress_message IS NOT NULL THEN ' · ' || progress_message ELSE '' END
           AS progress,
       eta_seconds,
       parent_operation_id,
       attempt,
       created_at,
       started_at
FROM operations
WHERE status IN ('pending','resuming','running')
ORDER BY created_at;

-- Counts by status, for a quick look.
CREATE VIEW IF NOT EXISTS operation_counts AS
SELECT status, count(*) AS operations FROM operations GROUP BY status;

-- Finished operations with their duration in seconds.
CREATE VIEW IF NOT EXISTS recent_operations AS
SELECT operation_id,
       operation_type,
       status,
       stop_reason,
       round((julianday(completed_at) - julianday(started_at)) * 86400.0, 3) AS duration_s,
       error_message,
       completed_at
FROM operations
WHERE completed_at IS NOT NULL
ORDER BY completed_at DESC;
