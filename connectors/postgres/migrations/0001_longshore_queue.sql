-- The queue table of longshore-postgres, for the default table name `longshore_queue`.
-- `longshore_postgres::migration("my_table")` gives the same for another name, and
-- `PgQueueSource::migrate` runs it. Safe to run again.
CREATE TABLE IF NOT EXISTS longshore_queue (
    id          bigserial   PRIMARY KEY,
    queue       text        NOT NULL DEFAULT 'default',
    payload     bytea       NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    -- A row is leased by moving this into the future; it comes back when it passes.
    visible_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 0,
    -- Failed for good with no dead-letter destination: kept here, never delivered again.
    failed_at   timestamptz,
    last_error  text
);
CREATE INDEX IF NOT EXISTS longshore_queue_ready ON longshore_queue (queue, visible_at, id) WHERE failed_at IS NULL;
CREATE OR REPLACE FUNCTION longshore_queue_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('longshore_queue', NEW.queue);
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER longshore_queue_notify AFTER INSERT ON longshore_queue
    FOR EACH ROW EXECUTE FUNCTION longshore_queue_notify();
