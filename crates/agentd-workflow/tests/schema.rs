//! The JSON Schemas describe both file formats and keep up with the router's weights.

use agentd_workflow::{role_json_schema, workflow_json_schema};

fn properties(schema: &serde_json::Value) -> Vec<String> {
    schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_workflow_schema_names_every_top_level_table() {
    let schema = workflow_json_schema();
    assert!(schema.is_object());
    assert_eq!(schema["title"], "agentd workflow");
    let mut top = properties(&schema);
    top.sort();
    assert_eq!(
        top,
        ["model", "nodes", "roles", "router", "stages", "workflow"]
    );
    assert_eq!(schema["required"], serde_json::json!(["workflow"]));
    assert_eq!(schema["additionalProperties"], false);
    let text = schema.to_string();
    for key in [
        "max_rounds",
        "stop_when",
        "run_budget",
        "static_k",
        "after",
        "rounds",
        "after_first",
        "budget_multiplier",
    ] {
        assert!(text.contains(key), "{key} missing from the workflow schema");
    }
}

#[test]
fn the_role_schema_names_every_key() {
    let schema = role_json_schema();
    assert_eq!(schema["title"], "agentd role");
    let mut top = properties(&schema);
    top.sort();
    assert_eq!(
        top,
        [
            "affinity",
            "budget",
            "default_affinity",
            "description",
            "keywords",
            "model",
            "name",
            "output",
            "prompt",
            "readers",
            "reads",
            "writes"
        ]
    );
    let mut required: Vec<String> = serde_json::from_value(schema["required"].clone()).unwrap();
    required.sort();
    assert_eq!(required, ["description", "writes"]);
    let text = schema.to_string();
    for key in [
        "system",
        "template",
        "text_kind",
        "temperature",
        "max_tokens",
    ] {
        assert!(text.contains(key), "{key} missing from the role schema");
    }
}

#[test]
fn schemas_have_no_null_since_toml_has_none() {
    for schema in [workflow_json_schema(), role_json_schema()] {
        let text = schema.to_string();
        assert!(!text.contains("\"null\""), "{text}");
        assert!(!text.contains(":null"), "{text}");
    }
    let schema = workflow_json_schema();
    let stop = &schema["$defs"]["WorkflowSection"]["properties"]["stop_when"];
    assert_eq!(stop["$ref"], "#/$defs/StopWhenSection", "{stop}");
    let max_rounds = &schema["$defs"]["WorkflowSection"]["properties"]["max_rounds"];
    assert_eq!(max_rounds["type"], "integer");
    assert_eq!(max_rounds["minimum"], 1);
}

#[test]
fn the_weights_schema_matches_the_router_weights() {
    let schema = workflow_json_schema();
    let weights = &schema["$defs"]["WeightsSection"];
    let mut in_schema = properties(weights);
    in_schema.sort();
    let defaults = serde_json::to_value(agentd_router::Weights::default()).unwrap();
    let mut in_router: Vec<String> = defaults.as_object().unwrap().keys().cloned().collect();
    in_router.sort();
    assert_eq!(
        in_schema, in_router,
        "add the router's new weight to raw::WeightsSection"
    );
}
