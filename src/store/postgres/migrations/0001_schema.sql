-- opsd schema for PostgreSQL, migration 1: the tables, columns and views
-- of schema.sql (SQLite) with PostgreSQL types, plus the columns and table
-- of several hosts (SPEC §11). Timestamps are RFC 3339 UTC text with
-- microseconds, as in SQLite, so they sort as text and read the same.

-- The database server's clock as opsd's timestamp text: leases are
-- compared on one clock, whatever the hosts' clocks say.
CREATE FUNCTION opsd_ts(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

CREATE TABLE operations (
    operation_id        TEXT PRIMARY KEY NOT NULL,
    parent_operation_id TEXT REFERENCES operations(operation_id),
    operation_type      TEXT NOT NULL
        CHECK (operation_type IN ('dummy','command','training','backtest','pipeline')),
    status              TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending','resuming','running','completed','failed','cancelled')),
    stop_reason         TEXT
        CHECK (stop_reason IS NULL OR stop_reason IN ('user','parent','shutdown','crash','error')),
    priority            BIGINT NOT NULL DEFAULT 0,
    attempt             BIGINT NOT NULL DEFAULT 0,
    max_attempts        BIGINT NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    run_after           TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    completed_at        TEXT,
    updated_at          TEXT NOT NULL,
    progress_percent    DOUBLE PRECISION NOT NULL DEFAULT 0
        CHECK (progress_percent BETWEEN 0 AND 100),
    progress_message    TEXT,
    current_step        TEXT,
    steps_completed     BIGINT,
    steps_total         BIGINT,
    items_processed     BIGINT,
    items_total         BIGINT,
    eta_seconds         DOUBLE PRECISION,
    progress_context    JSONB,
    metadata            JSONB NOT NULL DEFAULT '{}',
    result_summary      JSONB,
    error_message       TEXT,
    warnings            JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(warnings) = 'array'),
    errors              JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    idempotency_key     TEXT,
    phase_start         DOUBLE PRECISION CHECK (phase_start IS NULL OR phase_start BETWEEN 0 AND 100),
    phase_end           DOUBLE PRECISION CHECK (phase_end IS NULL OR phase_end BETWEEN 0 AND 100),
    fail_parent         BIGINT NOT NULL DEFAULT 0 CHECK (fail_parent IN (0,1)),
    gpus_requested      BIGINT NOT NULL DEFAULT 0 CHECK (gpus_requested >= 0),
    gpus_assigned       JSONB,
    -- The host running the operation (or that ran it last), and until when
    -- its claim holds without renewal (NULL when not running).
    claimed_by          TEXT,
    lease_expires_at    TEXT
);

CREATE UNIQUE INDEX idx_operations_idempotency_key
    ON operations(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX idx_operations_runnable
    ON operations(operation_type, priority DESC, created_at, operation_id)
    WHERE status = 'pending';
CREATE INDEX idx_operations_recoverable
    ON operations(stop_reason) WHERE stop_reason IN ('shutdown','crash');
CREATE INDEX idx_operations_status_created ON operations(status, created_at);
CREATE INDEX idx_operations_type_created ON operations(operation_type, created_at);
CREATE INDEX idx_operations_parent
    ON operations(parent_operation_id) WHERE parent_operation_id IS NOT NULL;
CREATE INDEX idx_operations_created ON operations(created_at);
-- Lease renewal and stop requests per host, and the rescuer's scan.
CREATE INDEX idx_operations_running_host
    ON operations(claimed_by) WHERE status = 'running';
CREATE INDEX idx_operations_lease
    ON operations(lease_expires_at) WHERE status = 'running';

CREATE TABLE operation_metrics (
    operation_id TEXT NOT NULL REFERENCES operations(operation_id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL CHECK (seq >= 1),
    recorded_at  TEXT NOT NULL,
    data         JSONB NOT NULL,
    PRIMARY KEY (operation_id, seq)
);

CREATE TABLE operation_checkpoints (
    operation_id         TEXT PRIMARY KEY NOT NULL
        REFERENCES operations(operation_id) ON DELETE CASCADE,
    checkpoint_type      TEXT NOT NULL
        CHECK (checkpoint_type IN ('periodic','cancellation','shutdown','failure')),
    created_at           TEXT NOT NULL,
    state                JSONB NOT NULL,
    artifacts_path       TEXT,
    state_size_bytes     BIGINT NOT NULL DEFAULT 0,
    artifacts_size_bytes BIGINT NOT NULL DEFAULT 0,
    progress_percent     DOUBLE PRECISION,
    metrics_seq          BIGINT NOT NULL DEFAULT 0
);

-- The daemons sharing this database: registered at start, refreshed by
-- each heartbeat, removed on a clean stop.
CREATE TABLE hosts (
    host         TEXT PRIMARY KEY NOT NULL,
    started_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    version      TEXT NOT NULL,
    workers      BIGINT NOT NULL DEFAULT 0,
    gpus         JSONB NOT NULL DEFAULT '[]',
    types        JSONB NOT NULL DEFAULT '[]'
);

CREATE VIEW active_operations AS
SELECT operation_id,
       operation_type,
       status,
       priority,
       lpad(to_char(progress_percent, 'FM990.0'), 5) || '%'
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

CREATE VIEW operation_counts AS
SELECT status, count(*) AS operations FROM operations GROUP BY status;

CREATE VIEW recent_operations AS
SELECT operation_id,
       operation_type,
       status,
       stop_reason,
       round(extract(epoch FROM (completed_at::timestamptz - started_at::timestamptz)), 3)
           AS duration_s,
       error_message,
       completed_at
FROM operations
WHERE completed_at IS NOT NULL
ORDER BY completed_at DESC;
