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
    if !portico_config::is_key_id(id) {
        eprintln!(
            "portico: a key id is 1 to {} letters, digits, `_` and `-`",
            portico_config::MAX_KEY_ID
        );
        return ExitCode::from(1);
    }
    // Printed as TOML strings the origin then loads: a name it would refuse
    // (or that Rust's `{:?}` escapes otherwise than TOML) is refused here.
    if let Some(bad) = plans.iter().find(|p| !portico_config::is_key_id(p)) {
        eprintln!(
            "portico: usage plan {bad:?}: a plan name is 1 to {} letters, digits, `_` and `-`",
            portico_config::MAX_NAME
        );
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
    let key = key.trim_end_matches(['\n', '\r']);
    // A key no request could present would hash fine and then answer 403
    // to every request that tried it.
    if !keys::is_well_formed(key.as_bytes()) {
        eprintln!(
            "portico: a key is {} to {} characters of A-Z a-z 0-9 . _ ~ -",
            keys::MIN_LEN,
            keys::MAX_LEN
        );
        return ExitCode::from(1);
    }
    println!("{}", keys::stored_form(key));
    ExitCode::SUCCESS
}
