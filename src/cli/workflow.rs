//! `agentd validate`, `agentd graph` and `agentd schema`.

use std::path::PathBuf;

use agentd_workflow::{FileKind, Workflow, role_json_schema, validate_path, workflow_json_schema};

/// Exit code of a configuration error (sysexits' EX_CONFIG, as `vector validate` uses).
pub const EXIT_CONFIG: u8 = 78;

/// `agentd validate` arguments.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Workflow or role files (a folder: every .toml file in it).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Validates every file; prints located errors. Returns whether all are valid.
pub fn validate(args: ValidateArgs) -> bool {
    let mut files = Vec::new();
    for path in args.files {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                eprintln!("error: no .toml files in {}", path.display());
                return false;
            }
            files.extend(found);
        } else {
            files.push(path);
        }
    }
    let mut ok = true;
    for file in &files {
        match validate_path(file) {
            Ok(kind) => {
                let what = match kind {
                    FileKind::Workflow => "workflow",
                    FileKind::Role => "role",
                };
                println!("ok: {} ({what})", file.display());
            }
            Err(errors) => {
                ok = false;
                eprintln!("{errors}");
            }
        }
    }
    if !ok {
        eprintln!("configuration is invalid");
    }
    ok
}

/// Output format of `agentd graph`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// `agentd graph` arguments.
#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// The workflow file.
    pub workflow: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
}

/// Prints a workflow's graph. Returns false (after printing the errors) if it is invalid.
pub fn graph(args: GraphArgs) -> bool {
    match Workflow::load(&args.workflow) {
        Ok(workflow) => {
            match args.format {
                GraphFormat::Dot => print!("{}", workflow.to_dot()),
                GraphFormat::Mermaid => print!("{}", workflow.to_mermaid()),
            }
            true
        }
        Err(errors) => {
            eprintln!("{errors}");
            false
        }
    }
}

/// Which schema `agentd schema` prints.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SchemaKind {
    /// workflows/*.toml
    Workflow,
    /// agents/*.toml
    Role,
}

/// `agentd schema` arguments.
#[derive(clap::Args, Debug)]
pub struct SchemaArgs {
    /// Which file kind (default: both, as {"workflow": ..., "role": ...}).
    #[arg(value_enum)]
    pub kind: Option<SchemaKind>,
}

/// Prints JSON Schemas of the configuration files (for editors, e.g. taplo or VS Code).
pub fn schema(args: SchemaArgs) -> anyhow::Result<()> {
    let value = match args.kind {
        Some(SchemaKind::Workflow) => workflow_json_schema(),
        Some(SchemaKind::Role) => role_json_schema(),
        None => serde_json::json!({
            "workflow": workflow_json_schema(),
            "role": role_json_schema(),
        }),
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
