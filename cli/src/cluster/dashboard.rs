//! `yr dashboard`: the URL that opens the cluster's web page logged in, made from the master
//! node's session: the dashboard's address and a one-time login code signed with the REST token
//! (valid about two minutes, accepted once; see `yr_control::dashboard::auth`). It opens it in
//! a browser (`xdg-open`) unless `--print`; failing to open one is not an error.

use anyhow::{anyhow, Result};
use clap::Args;

use super::session::SessionArg;

#[derive(Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Only print the URL; do not open a browser.
    #[arg(long)]
    print: bool,
}

pub fn dashboard(a: DashboardArgs) -> Result<()> {
    let s = a.session.load()?;
    let url = s.dashboard_url.clone().ok_or_else(|| {
        anyhow!(
            "the session of node {} has no dashboard: it runs on master nodes (pass the master \
             node's session with --session)",
            s.node_id
        )
    })?;
    let token_file = s.token_file.clone().ok_or_else(|| {
        anyhow!(
            "the session of node {} has no REST token file: pass the master node's session",
            s.node_id
        )
    })?;
    let token = yr_control::rest::read_token(&token_file)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let code = yr_control::dashboard::auth::login_code(&token, now);
    let link = format!("{}/login?code={code}", url.trim_end_matches('/'));
    println!("{link}");
    if !a.print {
        // A browser is a convenience: without one (a server, no display) the URL is printed.
        let opened = std::process::Command::new("xdg-open")
            .arg(&link)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_err() {
            eprintln!("(no browser opened: open the URL above; it works once, for 2 minutes)");
        }
    }
    Ok(())
}
