//! `portico probe TOPOLOGY`: from every client site, time to first byte through
//! each API's entry (edge APIs at a PoP, regional APIs at the origin), cold and
//! warm, against the physical minimum of the topology's links. Starts the
//! topology itself, or measures one already running (`--json` of `portico up`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portico_config::topology::Topology;

use crate::AppError;
use crate::topology::awake::CpuIdle;
use crate::topology::chart::{self, EntryResult};
use crate::topology::client::{Client, ClientThread};
use crate::topology::h3client::H3Client;
use crate::topology::manifest::Manifest;
use crate::topology::measure;
use crate::topology::placement::CpuPlacement;
use crate::topology::runner::{Options, Running};
use crate::topology::{UpError, file_error};

/// What `portico probe` measures and where it writes.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Measurements of each kind per entry.
    pub runs: u32,
    /// Directory for probe.csv and probe.svg.
    pub out: PathBuf,
    /// Let CPUs enter slow idle states while measuring (see [`CpuIdle`]).
    pub allow_idle: bool,
    /// Leave links and hosts on shared CPUs (see [`CpuPlacement`]).
    pub shared_cpus: bool,
}

pub async fn run(
    topology: &Path,
    json: Option<&Path>,
    opts: &ProbeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let runs = opts.runs;
    let topology = portico_config::load_topology_file(topology)?;
    tokio::pin!(shutdown);
    let (manifest, running) = match json {
        Some(path) => (Manifest::read(path)?, None),
        None => {
            let opts = Options::default();
            let running = tokio::select! {
                r = Running::start(topology.clone(), &opts) => r?,
                () = &mut shutdown => return Ok(()),
            };
            (running.manifest.clone(), Some(running))
        }
    };
    let thread = ClientThread::start()?;
    let cpu_idle = CpuIdle::hold(opts.allow_idle);
    let placement = CpuPlacement::separate(&manifest, thread.tid(), opts.shared_cpus);
    let conditions = format!("{}\n{}", cpu_idle.describe(), placement.describe());
    eprintln!("{conditions}");
    let measured = tokio::select! {
        r = measure_all(&topology, &manifest, runs, &thread) => Some(r),
        () = &mut shutdown => None,
    };
    // The request and the placement end here: stopping the topology and
    // writing reports is not measured.
    drop(placement);
    drop(cpu_idle);
    if let Some(running) = running {
        running.stop().await;
    }
    let Some(results) = measured.transpose()? else {
        return Ok(());
    };
    print!("{}", chart::table(&results, runs));
    println!("{conditions}");
    write_reports(&results, &topology, runs, &opts.out, &conditions)?;
    Ok(())
}

/// Measures every entry of the topology, one at a time (concurrent probes would
/// measure each other).
async fn measure_all(
    t: &Topology,
    m: &Manifest,
    runs: u32,
    thread: &ClientThread,
) -> Result<Vec<EntryResult>, UpError> {
    let client = Client::from_ca_file(&m.ca)?;
    let h3 = match m.entries.iter().any(|e| e.h3) {
        true => Some(Arc::new(H3Client::from_ca_file(&m.ca, thread.handle())?)),
        false => None,
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut results = Vec::new();
    for e in &t.entries {
        let (site, api) = (&t.sites[e.site].name, &t.apis[e.api]);
        let info = m
            .entries
            .iter()
            .find(|x| &x.site == site && x.api == api.name)
            .ok_or_else(|| UpError::Manifest {
                path: m.run_dir.clone(),
                reason: format!(
                    "the running topology has no entry for site `{site}`, API `{}`",
                    api.name
                ),
            })?;
        eprintln!(
            "probing {site} → {} ({}) via {}",
            api.name, info.mode, info.node
        );
        // Every measurement of the entry runs on the client thread.
        let (c, h, i) = (client.clone(), h3.clone(), info.clone());
        let measured = thread
            .handle()
            .spawn(async move { measure::entry(&c, h.as_deref(), &i, runs, nonce).await })
            .await
            .map_err(|err| UpError::ProbeClient(format!("task: {err}")))?;
        let samples = measured.map_err(|err| UpError::NotServing {
            url: info.url.clone(),
            site: site.clone(),
            api: api.name.clone(),
            secs: crate::topology::client::REQUEST_TIMEOUT.as_secs(),
            reason: err.to_string(),
        })?;
        results.push(EntryResult {
            site: site.clone(),
            api: api.name.clone(),
            mode: info.mode.clone(),
            region: t.regions[api.region].name.clone(),
            via: info.node.clone(),
            minimum: measure::minimum(t, e),
            samples,
        });
    }
    Ok(results)
}

fn write_reports(
    results: &[EntryResult],
    t: &Topology,
    runs: u32,
    out: &Path,
    conditions: &str,
) -> Result<(), UpError> {
    std::fs::create_dir_all(out).map_err(file_error("creating", out))?;
    let csv = out.join("probe.csv");
    std::fs::write(&csv, chart::csv(results)).map_err(file_error("writing", &csv))?;
    let svg = out.join("probe.svg");
    let title = format!(
        "portico probe: topology `{}`, {}; {}",
        t.name,
        chart::medians_of(results, runs),
        conditions.replace('\n', "; ")
    );
    std::fs::write(&svg, chart::svg(results, &title)).map_err(file_error("writing", &svg))?;
    println!("wrote {} and {}", csv.display(), svg.display());
    Ok(())
}
