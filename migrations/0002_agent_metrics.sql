-- Agent metrics (schema agent_metrics): health checks, events, tool calls and
-- hourly rollups written by the Python web service. Exactly the legacy
-- 002_agent_metrics.sql columns and view outputs; every index is created
-- IF NOT EXISTS (the legacy file failed on its second run).

CREATE SCHEMA IF NOT EXISTS agent_metrics;
COMMENT ON SCHEMA agent_metrics IS 'Agent health monitoring and telemetry data';

CREATE TABLE IF NOT EXISTS agent_metrics.agent_health_checks (
    id               SERIAL PRIMARY KEY,
    agent_name       VARCHAR(100) NOT NULL,
    status           VARCHAR(50) NOT NULL,
    response_time_ms INTEGER,
    error_message    TEXT,
    checked_at       TIMESTAMPTZ DEFAULT NOW(),
    metadata         JSONB
);
COMMENT ON TABLE agent_metrics.agent_health_checks IS 'Agent health check results (online, offline, error, degraded)';

CREATE TABLE IF NOT EXISTS agent_metrics.agent_events (
    id              SERIAL PRIMARY KEY,
    agent_name      VARCHAR(100) NOT NULL,
    event_type      VARCHAR(50) NOT NULL,
    event_status    VARCHAR(50),
    query           TEXT,
    tool_name       VARCHAR(100),
    duration_ms     INTEGER,
    error_message   TEXT,
    conversation_id VARCHAR(100),
    metadata        JSONB,
    created_at      TIMESTAMPTZ DEFAULT NOW()
);
COMMENT ON TABLE agent_metrics.agent_events IS 'Agent lifecycle and activity events';

CREATE TABLE IF NOT EXISTS agent_metrics.tool_execution_log (
    id              SERIAL PRIMARY KEY,
    agent_name      VARCHAR(100) NOT NULL,
    tool_name       VARCHAR(100) NOT NULL,
    input_params    JSONB,
    output_data     TEXT,
    success         BOOLEAN NOT NULL,
    duration_ms     INTEGER,
    error_message   TEXT,
    conversation_id VARCHAR(100),
    executed_at     TIMESTAMPTZ DEFAULT NOW()
);
COMMENT ON TABLE agent_metrics.tool_execution_log IS 'Individual tool executions by agents';

CREATE TABLE IF NOT EXISTS agent_metrics.agent_performance_metrics (
    id                   SERIAL PRIMARY KEY,
    agent_name           VARCHAR(100) NOT NULL,
    metric_hour          TIMESTAMPTZ NOT NULL,
    total_queries        INTEGER DEFAULT 0,
    successful_queries   INTEGER DEFAULT 0,
    failed_queries       INTEGER DEFAULT 0,
    avg_response_time_ms INTEGER,
    total_tool_calls     INTEGER DEFAULT 0,
    created_at           TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE (agent_name, metric_hour)
);
COMMENT ON TABLE agent_metrics.agent_performance_metrics IS 'Hourly per-agent performance rollups';

CREATE INDEX IF NOT EXISTS idx_agent_health_agent_name ON agent_metrics.agent_health_checks (agent_name);
CREATE INDEX IF NOT EXISTS idx_agent_health_checked_at ON agent_metrics.agent_health_checks (checked_at DESC);
CREATE INDEX IF NOT EXISTS idx_agent_health_status ON agent_metrics.agent_health_checks (status);

CREATE INDEX IF NOT EXISTS idx_agent_events_agent_name ON agent_metrics.agent_events (agent_name);
CREATE INDEX IF NOT EXISTS idx_agent_events_event_type ON agent_metrics.agent_events (event_type);
CREATE INDEX IF NOT EXISTS idx_agent_events_created_at ON agent_metrics.agent_events (created_at DESC);
CREATE INDEX IF NOT EXISTS idx_agent_events_conversation_id ON agent_metrics.agent_events (conversation_id);

CREATE INDEX IF NOT EXISTS idx_tool_exec_agent_name ON agent_metrics.tool_execution_log (agent_name);
CREATE INDEX IF NOT EXISTS idx_tool_exec_tool_name ON agent_metrics.tool_execution_log (tool_name);
CREATE INDEX IF NOT EXISTS idx_tool_exec_executed_at ON agent_metrics.tool_execution_log (executed_at DESC);
CREATE INDEX IF NOT EXISTS idx_tool_exec_success ON agent_metrics.tool_execution_log (success);

CREATE INDEX IF NOT EXISTS idx_perf_metrics_agent_name ON agent_metrics.agent_performance_metrics (agent_name);
CREATE INDEX IF NOT EXISTS idx_perf_metrics_hour ON agent_metrics.agent_performance_metrics (metric_hour DESC);

-- The latest health check per agent.
CREATE OR REPLACE VIEW agent_metrics.agent_health_summary AS
SELECT DISTINCT ON (agent_name)
    agent_name, status, response_time_ms, error_message, checked_at, metadata
FROM agent_metrics.agent_health_checks
ORDER BY agent_name, checked_at DESC;

-- The 100 newest events, newest first.
CREATE OR REPLACE VIEW agent_metrics.recent_agent_activity AS
SELECT id, agent_name, event_type, event_status, query, tool_name, duration_ms,
       error_message, conversation_id, created_at
FROM agent_metrics.agent_events
ORDER BY created_at DESC
LIMIT 100;
