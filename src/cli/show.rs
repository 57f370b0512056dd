//! `apps`, `status`, `logs`, `releases`, `rollback`, `start|stop|restart`: aligned tables on stdout (or
//! JSON), log lines as they come.

use super::client::{Client, read_events};
use super::{Failure, app_name};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write;

/// Prints rows with each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn out(s: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(super::terminal::visible(s).as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(|e| Failure::failed(format!("cannot write to stdout: {e}")))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn apps_table(apps: &Value) -> String {
    let rows: Vec<Vec<String>> = list(apps)
        .iter()
        .map(|a| {
            vec![
                text(&a["name"]),
                text(&a["origin"]),
                text(&a["current_release"]),
                text(&a["domains"]),
                text(&a["source"]),
            ]
        })
        .collect();
    table(&["NAME", "ORIGIN", "RELEASE", "DOMAINS", "SOURCE"], &rows)
}

pub async fn apps(client: &Client, as_json: bool) -> Result<(), Failure> {
    let apps = client.get_json("/api/v1/apps").await?;
    out(&if as_json {
        pretty(&apps)
    } else {
        apps_table(&apps)
    })
}

pub async fn status(client: &Client, as_json: bool) -> Result<(), Failure> {
    let apps = client.get_json("/api/v1/apps").await?;
    let spinlets = client.get_json("/api/v1/spinlets").await?;
    let certs = client.get_json("/api/v1/certs").await?;
    if as_json {
        return out(&pretty(
            &json!({ "apps": apps, "spinlets": spinlets, "certs": certs }),
        ));
    }
    let now_ms = now_ms();
    let spinlet_rows: Vec<Vec<String>> = list(&spinlets)
        .iter()
        .map(|s| {
            let up = s["started_ms"]
                .as_u64()
                .map(|t| duration(now_ms.saturating_sub(t) / 1000))
                .unwrap_or_else(|| "-".into());
            vec![
                text(&s["app"]),
                text(&s["id"]),
                text(&s["release"]),
                text(&s["state"]),
                text(&s["pid"]),
                format!("{}:{}", text(&s["host"]), text(&s["port"])),
                up,
                text(&s["restarts"]),
            ]
        })
        .collect();
    let cert_rows: Vec<Vec<String>> = list(&certs)
        .iter()
        .map(|c| {
            let days = c["expires_in_days"].as_i64().unwrap_or(0);
            vec![
                text(&c["domain"]),
                if days < 0 {
                    "EXPIRED".into()
                } else {
                    format!("in {days} days")
                },
                text(&c["not_after"]),
            ]
        })
        .collect();
    let mut s = String::from("APPS\n");
    s.push_str(&apps_table(&apps));
    s.push_str("\nSPINLETS\n");
    s.push_str(&table(
        &[
            "APP", "ID", "RELEASE", "STATE", "PID", "ADDRESS", "UP", "RESTARTS",
        ],
        &spinlet_rows,
    ));
    s.push_str("\nCERTIFICATES\n");
    s.push_str(&table(&["DOMAIN", "EXPIRES", "NOT_AFTER"], &cert_rows));
    out(&s)
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn logs(
    client: &Client,
    app: &str,
    follow: bool,
    lines: usize,
    raw: bool,
) -> Result<(), Failure> {
    app_name(app)?;
    let path = format!(
        "/api/v1/apps/{app}/logs?lines={lines}{}",
        if follow { "&follow=1" } else { "" }
    );
    let resp = client.send(client.request(Method::GET, &path)).await?;
    let mut write_failed = false;
    read_events(resp, |ev| {
        if ev.name.as_deref() == Some("end") {
            return false;
        }
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the command quietly.
        let line = if raw {
            ev.data.as_str().into()
        } else {
            super::terminal::visible(&ev.data)
        };
        if writeln!(stdout, "{line}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            write_failed = true;
            return false;
        }
        true
    })
    .await?;
    let _ = write_failed;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn releases_table(releases: &Value, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = list(releases)
        .iter()
        .map(|r| {
            let state = match (r["current"] == true, r["pinned"] == true) {
                (true, true) => "serving, pinned",
                (true, false) => "serving",
                (false, true) => "pinned",
                (false, false) => "-",
            };
            let built = r["created_ms"]
                .as_u64()
                .map(|t| format!("{} ago", duration(now_ms.saturating_sub(t) / 1000)))
                .unwrap_or_else(|| "-".into());
            let commit = r["source_commit"]
                .as_str()
                .map(|c| c.chars().take(12).collect())
                .unwrap_or_else(|| "-".into());
            vec![
                text(&r["release"]),
                state.into(),
                built,
                text(&r["framework"]),
                text(&r["source"]),
                commit,
                text(&r["build_id"]),
            ]
        })
        .collect();
    table(
        &[
            "RELEASE",
            "STATE",
            "BUILT",
            "FRAMEWORK",
            "SOURCE",
            "COMMIT",
            "BUILD",
        ],
        &rows,
    )
}

pub async fn releases(client: &Client, app: &str, as_json: bool) -> Result<(), Failure> {
    app_name(app)?;
    let releases = client
        .get_json(&format!("/api/v1/apps/{app}/releases"))
        .await?;
    out(&if as_json {
        pretty(&releases)
    } else {
        releases_table(&releases, now_ms())
    })
}

pub async fn rollback(client: &Client, app: &str, release: Option<u64>) -> Result<(), Failure> {
    app_name(app)?;
    let body = release.map(|r| json!({ "release": r }));
    let answer = client
        .call(Method::POST, &format!("/api/v1/apps/{app}/rollback"), body)
        .await?;
    out(&format!(
        "{app}: now serving release {}\n",
        text(&answer["release"])
    ))
}

pub async fn lifecycle(client: &Client, app: &str, action: &str) -> Result<(), Failure> {
    app_name(app)?;
    client
        .call(Method::POST, &format!("/api/v1/apps/{app}/{action}"), None)
        .await?;
    let done = match action {
        "start" => "started",
        "stop" => "stopped",
        _ => "restarted",
    };
    out(&format!("{app}: {done}\n"))
}

/// `spinforge reload`: the running SpinForge reloads its config file (as on SIGHUP) and says
/// what it applied, what needs a restart (which key, and why), or every error of a refused file.
pub async fn reload(client: &Client, as_json: bool) -> Result<(), Failure> {
    let report = client.call(Method::POST, "/api/v1/reload", None).await?;
    if as_json {
        return out(&format!("{report:#}\n"));
    }
    let strings = |key: &str| -> Vec<String> {
        report[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let file = report["file"].as_str().unwrap_or("the config file");
    let took = report["took_ms"].as_f64().unwrap_or(0.0);
    let applied = strings("applied");
    let mut text = if applied.is_empty() {
        format!("{file}: reloaded in {took:.1} ms; nothing differs from the running config\n")
    } else {
        format!(
            "{file}: reloaded in {took:.1} ms; applied: {}\n",
            applied.join(", ")
        )
    };
    for r in report["restart"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "needs a restart: {} ({})\n",
            r["key"].as_str().unwrap_or(""),
            r["why"].as_str().unwrap_or("")
        ));
    }
    for w in strings("warnings") {
        text.push_str(&format!("warning: {w}\n"));
    }
    out(&text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "X"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "22".into()],
            ],
        );
        assert_eq!(t, "NAME    X\na       1\nlonger  22\n");
    }

    #[test]
    fn releases_say_which_serves_which_is_pinned_and_when_each_was_built() {
        let releases = json!([
            {"release": 3, "current": false, "pinned": false, "framework": "express",
             "source": "https://example.com/shop.git#main",
             "source_commit": "0123456789abcdef0123", "build_id": "shop-3", "created_ms": 940_000},
            {"release": 2, "current": true, "pinned": true, "framework": "express",
             "source": "upload", "source_commit": null, "build_id": "shop-2",
             "created_ms": 400_000},
            {"release": 1, "current": false, "pinned": false, "framework": null, "source": null,
             "source_commit": null, "build_id": null, "created_ms": null},
        ]);
        let t = releases_table(&releases, 1_000_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("RELEASE  STATE"), "{t}");
        fn cells(l: &str) -> Vec<&str> {
            l.split("  ")
                .filter(|c| !c.is_empty())
                .map(str::trim)
                .collect()
        }
        assert_eq!(
            cells(lines[1]),
            [
                "3",
                "-",
                "60s ago",
                "express",
                "https://example.com/shop.git#main",
                "0123456789ab",
                "shop-3"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "2",
                "serving, pinned",
                "10m ago",
                "express",
                "upload",
                "-",
                "shop-2"
            ]
        );
        assert_eq!(cells(lines[3]), ["1", "-", "-", "-", "-", "-", "-"]);
    }
}
