-- +goose Up
-- Optional per-session metadata (client name, instance, remote address...):
-- a small JSON object. The library caps it at 1 KiB of encoded JSON; the
-- check here is a looser backstop for writers that bypass the library.
ALTER TABLE agent_sessions
    ADD COLUMN metadata jsonb,
    ADD CONSTRAINT agent_sessions_metadata_object
        CHECK (metadata IS NULL OR (jsonb_typeof(metadata) = 'object' AND octet_length(metadata::text) <= 4096));

-- Per-agent overrides of the configured session limit. The limit
-- transaction reads an agent's row here inside the same SERIALIZABLE
-- transaction that counts its sessions, so changing a limit concurrently
-- with issuing is serialized like everything else.
CREATE TABLE agent_limits (
    agent_id     text        NOT NULL,
    max_sessions integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_limits_pkey PRIMARY KEY (agent_id),
    CONSTRAINT agent_limits_agent_id_length CHECK (octet_length(agent_id) BETWEEN 1 AND 512),
    CONSTRAINT agent_limits_positive CHECK (max_sessions >= 1)
);

-- +goose Down
DROP TABLE agent_limits;
ALTER TABLE agent_sessions DROP COLUMN metadata;
