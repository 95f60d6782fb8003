//! The OpenAPI 3.1 document served at `/openapi.json`, written by hand (a generator would
//! cost more build time than the document is long). A test checks that every route of the
//! router is documented.

use serde_json::{Value, json};

/// Every documented `(method, path)`.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/v1/runs"),
    ("get", "/v1/runs"),
    ("get", "/v1/runs/{id}"),
    ("delete", "/v1/runs/{id}"),
    ("get", "/v1/runs/{id}/events"),
    ("get", "/v1/runs/{id}/memory"),
    ("get", "/v1/runs/{id}/manifests"),
    ("post", "/v1/runs/{id}/cancel"),
    ("get", "/v1/workflows"),
    ("post", "/v1/workflows/validate"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        let description = match *code {
            "400" => "Malformed request (the message names the problem).",
            "401" => "Missing or unknown bearer token.",
            "404" => "No such run (or it belongs to another tenant).",
            "409" => "The run is not in a state that allows this.",
            "413" => "Body, input or documents over the limits.",
            "422" => "Well-formed but not runnable (unknown or invalid workflow).",
            "429" => "The run queue is full; see Retry-After.",
            "503" => "The daemon is draining (shutting down).",
            _ => "Error.",
        };
        out.insert(
            (*code).to_owned(),
            json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            }),
        );
    }
    Value::Object(out)
}

fn with(mut responses: Value, code: &str, response: Value) -> Value {
    responses[code] = response;
    responses
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Run id (a UUID v7)."})
}

fn query_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

/// The OpenAPI document.
pub fn document() -> Value {
    let run_ref = json!({"$ref": "#/components/schemas/Run"});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "agentd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Runs multi-agent LLM workflows over a shared memory with role-aware context routing. Every /v1 endpoint and /metrics need `Authorization: Bearer <token>` when tokens are configured; a tenant sees only its own runs (others answer 404). Errors are JSON: {\"error\": {\"code\", \"message\", \"details\"?}}."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"description": "Structured details, e.g. located workflow errors (file, line, column, message, help, source_line, span_len)."}
                    }}}
                },
                "Document": {"type": "object", "required": ["text"], "properties": {
                    "title": {"type": ["string", "null"]}, "text": {"type": "string"}
                }},
                "CreateRun": {
                    "type": "object",
                    "required": ["input"],
                    "additionalProperties": false,
                    "properties": {
                        "workflow": {"type": "string", "description": "A workflow of the workflows folder, by name (file stem)."},
                        "workflow_toml": {"type": "string", "description": "An inline workflow (TOML). Exactly one of workflow and workflow_toml."},
                        "input": {"type": "string", "description": "The task."},
                        "documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}, "description": "Documents the run's agents also read (deleted with the run)."},
                        "policy": {"type": "string", "description": "rcr, full, static, static:K or recency (default: the workflow's)."},
                        "run_budget": {"type": "integer", "minimum": 0, "description": "Context tokens for all calls of the run."}
                    }
                },
                "RunAccepted": {"type": "object", "properties": {
                    "id": {"type": "string"}, "status": {"enum": ["queued", "running"]}, "links": {"type": "object"}
                }},
                "RunSummary": {"type": "object", "properties": {
                    "id": {"type": "string"},
                    "status": {"enum": ["queued", "running", "finished", "failed", "cancelled"]},
                    "workflow": {"type": ["string", "null"]},
                    "round": {"type": "integer"},
                    "created_ms": {"type": "integer"},
                    "updated_ms": {"type": "integer"},
                    "error": {"type": ["string", "null"]}
                }},
                "Run": {"allOf": [{"$ref": "#/components/schemas/RunSummary"}, {"type": "object", "properties": {
                    "input": {"type": "string"},
                    "policy": {},
                    "namespace": {"type": "string"},
                    "answer": {"description": "The answer item, once finished."},
                    "evidence": {"type": "array", "description": "The items the answer cites."},
                    "usage": {"type": "object", "description": "Tokens, calls, cost and time, per node, role and round."},
                    "last_event_id": {"type": "integer"}
                }}]},
                "Event": {"type": "object", "description": "One run event: run, seq (the SSE id), at_ms, type and its fields.", "properties": {
                    "run": {"type": "string"}, "seq": {"type": "integer"}, "at_ms": {"type": "integer"},
                    "type": {"enum": ["run_started", "run_resumed", "round_started", "node_started", "context_routed", "llm_call", "items_written", "node_failed", "node_finished", "checkpoint_voided", "round_finished", "run_finished", "run_failed", "run_cancelled"]}
                }}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/runs": {
                "post": {
                    "summary": "Start a run (queued when all run slots are busy).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateRun"}}}},
                    "responses": with(error_responses(&["400", "401", "413", "422", "429", "503"]), "202",
                        json_response("Accepted; the run is journaled and will run (also after a restart). Location: /v1/runs/{id}.", json!({"$ref": "#/components/schemas/RunAccepted"})))
                },
                "get": {
                    "summary": "The caller's runs, newest first, paged.",
                    "parameters": [
                        query_param("status", json!({"enum": ["queued", "running", "finished", "failed", "cancelled"]}), "Only runs with this status."),
                        query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}), "Page size."),
                        query_param("cursor", json!({"type": "string"}), "next_cursor of the previous page.")
                    ],
                    "responses": with(error_responses(&["400", "401"]), "200",
                        json_response("A page of runs.", json!({"type": "object", "properties": {
                            "runs": {"type": "array", "items": {"$ref": "#/components/schemas/RunSummary"}},
                            "next_cursor": {"type": ["string", "null"]}
                        }})))
                }
            },
            "/v1/runs/{id}": {
                "parameters": [id_param()],
                "get": {
                    "summary": "A run: status, answer and its evidence, usage.",
                    "responses": with(error_responses(&["401", "404"]), "200", json_response("The run.", run_ref))
                },
                "delete": {
                    "summary": "Delete a run (cancelled first if running): its memory, documents and records.",
                    "responses": with(error_responses(&["401", "404", "409"]), "204", json!({"description": "Deleted."}))
                }
            },
            "/v1/runs/{id}/events": {
                "parameters": [id_param()],
                "get": {
                    "summary": "The run's events as Server-Sent Events (id = seq, event = type, data = the event as JSON), past ones first, then live ones until the run ends. Resume with Last-Event-ID (or ?after=).",
                    "parameters": [
                        {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer"}, "description": "Send only events after this id."},
                        query_param("after", json!({"type": "integer"}), "Same as Last-Event-ID.")
                    ],
                    "responses": with(error_responses(&["400", "401", "404"]), "200",
                        json!({"description": "An event stream.", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}}))
                }
            },
            "/v1/runs/{id}/memory": {
                "parameters": [id_param()],
                "get": {
                    "summary": "The run's memory items in write order, filtered and paged.",
                    "parameters": [
                        query_param("scope", json!({"enum": ["run", "documents"], "default": "run"}), "The run's own items, or the documents given with it."),
                        query_param("kind", json!({"type": "string"}), "Kinds, comma-separated."),
                        query_param("stage", json!({"type": "string"}), "Stage."),
                        query_param("role", json!({"type": "string"}), "Producing role."),
                        query_param("node", json!({"type": "string"}), "Producing node."),
                        query_param("round", json!({"type": "integer"}), "Producing round."),
                        query_param("tag", json!({"type": "string"}), "Tag."),
                        query_param("include_superseded", json!({"type": "boolean"}), "Also superseded versions."),
                        query_param("after", json!({"type": "integer"}), "next_after of the previous page."),
                        query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}), "Page size.")
                    ],
                    "responses": with(error_responses(&["400", "401", "404"]), "200",
                        json_response("Items.", json!({"type": "object", "properties": {"items": {"type": "array"}, "next_after": {"type": ["integer", "null"]}}})))
                }
            },
            "/v1/runs/{id}/manifests": {
                "parameters": [id_param()],
                "get": {
                    "summary": "Every routing decision of the run: each candidate, its score components, selected or rejected and why.",
                    "responses": with(error_responses(&["401", "404"]), "200",
                        json_response("Manifests in order.", json!({"type": "object", "properties": {"manifests": {"type": "array"}}})))
                }
            },
            "/v1/runs/{id}/cancel": {
                "parameters": [id_param()],
                "post": {
                    "summary": "Ask a running or queued run to stop; it records run_cancelled.",
                    "responses": with(error_responses(&["401", "404", "409"]), "202", json!({"description": "Cancelling."}))
                }
            },
            "/v1/workflows": {
                "get": {
                    "summary": "The workflows of the workflows folder, checked.",
                    "responses": with(error_responses(&["401"]), "200", json_response("Workflows.", json!({"type": "object"})))
                }
            },
            "/v1/workflows/validate": {
                "post": {
                    "summary": "Check a workflow (TOML text, or JSON {\"toml\": ...}); invalid ones answer 422 with the same located errors as `agentd validate` in error.details.",
                    "requestBody": {"required": true, "content": {
                        "application/toml": {"schema": {"type": "string"}},
                        "text/plain": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"type": "object", "required": ["toml"], "properties": {"toml": {"type": "string"}}}}
                    }},
                    "responses": with(error_responses(&["400", "401", "413", "422"]), "200", json_response("Valid: the workflow's nodes and roles.", json!({"type": "object"})))
                }
            },
            "/healthz": {"get": {"summary": "Liveness.", "security": [], "responses": {"200": {"description": "Alive."}}}},
            "/readyz": {"get": {"summary": "Readiness (503 while draining).", "security": [], "responses": {"200": {"description": "Ready."}, "503": {"description": "Draining."}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics: runs by status, LLM calls and tokens by role and model, routing latency, pack sizes, node overhead, queue depth.", "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document.", "security": [], "responses": {"200": {"description": "OpenAPI 3.1."}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_is_documented() {
        let doc = super::document();
        for (method, path) in super::OPERATIONS {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is not documented"
            );
        }
    }
}
