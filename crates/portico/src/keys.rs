//! `portico keys`: create API keys and compute their stored form.
//!
//! The clear key is printed once, to standard output, and never written
//! anywhere by Portico: configuration holds only `sha256:<hex>`.

use std::io::Read;
use std::process::ExitCode;

use portico_gateway::keys;

use crate::cli::KeysCommand;

pub fn run(command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Create { id, plans } => create(&id, &plans),
        KeysCommand::Hash => hash_stdin(),
    }
}

fn create(id: &str, plans: &[String]) -> ExitCode {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        eprintln!("portico: key id must be [A-Za-z0-9_-]+");
        return ExitCode::from(1);
    }
    let key = keys::generate();
    let plans = plans
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("# The key is shown once; give it to the client now (header x-api-key):");
    println!("# {key}");
    println!("[[api_keys]]");
    println!("id = {id:?}");
    println!("hash = \"{}\"", keys::stored_form(&key));
    println!("plans = [{plans}]");
    println!("enabled = true");
    ExitCode::SUCCESS
}

fn hash_stdin() -> ExitCode {
    let mut key = String::new();
    if let Err(err) = std::io::stdin().read_to_string(&mut key) {
        eprintln!("portico: reading the key: {err}");
        return ExitCode::from(1);
    }
    println!("{}", keys::stored_form(key.trim_end_matches(['\n', '\r'])));
    ExitCode::SUCCESS
}
