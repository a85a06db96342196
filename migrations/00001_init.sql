-- +goose Up

-- One row per tenant. Each tenant's messages live in their own LIST
-- partition of messages, named by partition_name; persistence creates and
-- drops that partition in the same transaction as the row.
CREATE TABLE tenants (
    id             text        PRIMARY KEY
                               CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name           text        NOT NULL,
    worker_count   integer     NOT NULL CHECK (worker_count > 0),
    partition_name text        NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE messages_id_seq AS bigint;

-- tx_id is the id of the transaction that stored the row. Readers page by
-- (tx_id, id) and return only rows whose tx_id is below the xmin of their
-- snapshot: every transaction below it has ended, so no row can later
-- appear before a cursor that has passed it. Sequence ids alone are not in
-- commit order when transactions commit concurrently.
CREATE TABLE messages (
    tenant_id    text        NOT NULL,
    id           bigint      NOT NULL DEFAULT nextval('messages_id_seq'),
    message_id   text        NOT NULL,
    payload      jsonb       NOT NULL,
    published_at timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, message_id)
) PARTITION BY LIST (tenant_id);

ALTER SEQUENCE messages_id_seq OWNED BY messages.id;

CREATE INDEX messages_tenant_id_tx_id_id_idx ON messages (tenant_id, tx_id, id);

-- +goose Down

DROP TABLE messages;
DROP TABLE tenants;
