//! Secrets kept fresh past boot, against real peers on loopback: dynamic
//! secrets from OpenBao's `database` engine over a real PostgreSQL
//! (`refresh: lease`: renewal, a fresh read at the max TTL and after a
//! refused renewal, revocation on shutdown), and KV v2 refreshes that read
//! only the version metadata while the secret is unchanged.
//!
//! Peers: `scripts/deps/openbao.sh` and `scripts/deps/postgres.sh`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Sandbox, dump, free_port, peer, wait_until};
use crate::secrets::{Bao, audited};

/// A PostgreSQL server on loopback in a temp directory: the database behind
/// OpenBao's `database` engine, which makes a role per read with a
/// renewable lease and drops it when the lease is revoked. PostgreSQL
/// refuses to run as root; as root it runs as the package's `postgres`
/// user, which then owns the directory.
pub(crate) struct Postgres {
    child: Child,
    port: u16,
    psql: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub(crate) fn start() -> Option<Postgres> {
        use std::os::unix::process::CommandExt;
        let initdb = peer("pg-initdb")?;
        let postgres = peer("pg-postgres")?;
        let psql = peer("pg-psql")?;
        let dir = tempfile::tempdir().unwrap();
        let owner = nix::unistd::geteuid().is_root().then(|| {
            nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("the `postgres` user (scripts/deps/postgres.sh)")
        });
        if let Some(user) = &owner {
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let as_owner = |cmd: &mut Command| {
            cmd.current_dir(dir.path()).env("LC_ALL", "C");
            if let Some(user) = &owner {
                cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            }
        };
        let data = dir.path().join("data");
        let mut init = Command::new(initdb);
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        as_owner(&mut init);
        let out = init.output().expect("run initdb");
        assert!(out.status.success(), "initdb: {}", dump(&out));
        let port = free_port();
        let mut server = Command::new(postgres);
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_owner(&mut server);
        let child = server.spawn().expect("start postgres");
        let pg = Postgres {
            child,
            port,
            psql,
            _dir: dir,
        };
        wait_until("postgres to answer", Duration::from_secs(30), || {
            pg.login("postgres", "")
        });
        Some(pg)
    }

    /// Whether `user` can log in with `password` (over TCP, so the password
    /// is checked for the roles the engine makes). Nothing is printed.
    pub(crate) fn login(&self, user: &str, password: &str) -> bool {
        Command::new(&self.psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user])
            .args(["-d", "postgres", "-w", "-tAc", "select 1"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown takes the server's backends with it.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
    }
}

/// OpenBao's `database` engine on `pg`, with role `app` whose leases last
/// `ttl` and at most `max_ttl`; the `postgres` superuser logs in by trust.
/// Returns a token (not root) that may read the role's credentials and
/// renew and revoke leases.
fn database_engine(bao: &Bao, pg: &Postgres, ttl: &str, max_ttl: &str) -> String {
    bao.ok(&["secrets", "enable", "database"]);
    bao.ok(&[
        "write",
        "database/config/pg",
        "plugin_name=postgresql-database-plugin",
        "allowed_roles=app",
        &format!(
            "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port
        ),
        "username=postgres",
        "password=trust-makes-this-unused",
    ]);
    bao.ok(&[
        "write",
        "database/roles/app",
        "db_name=pg",
        &format!("default_ttl={ttl}"),
        &format!("max_ttl={max_ttl}"),
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    ]);
    bao.ok_with_file(
        &["policy", "write", "leases", "FILE"],
        "leases.hcl",
        "path \"database/creds/app\" { capabilities = [\"read\"] }\n\
         path \"sys/leases/renew\" { capabilities = [\"update\"] }\n\
         path \"sys/leases/revoke\" { capabilities = [\"update\"] }\n",
    );
    bao.ok(&[
        "token",
        "create",
        "-policy=leases",
        "-ttl=1h",
        "-field=token",
    ])
}

/// The two lines of the rendered credentials file.
fn credentials(sb: &Sandbox) -> (String, String) {
    let text = sb.read("conn.txt");
    let mut lines = text.lines().map(str::to_string);
    (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    )
}

/// Reads of `path` in an OpenBao file audit log (`kv put` writes the
/// same path).
fn reads(log: &std::path::Path, path: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["type"] == "response"
                && v["request"]["path"] == path
                && v["request"]["operation"] == "read"
        })
        .count()
}

/// `bootplan_secret_expiry_timestamp_seconds` of `secret`, from the metrics endpoint.
fn expiry(port: u16, secret: &str) -> f64 {
    metric(
        port,
        "bootplan_secret_expiry_timestamp_seconds{",
        &format!("secret=\"{secret}\""),
    )
    .unwrap_or_else(|| panic!("no expiry gauge of {secret}"))
}

/// The value of the first series named `series` (up to its `{`) with
/// `label`, from the metrics endpoint.
fn metric(port: u16, series: &str, label: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find(|l| l.starts_with(series) && l.contains(label))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// `refresh: lease` on dynamic database credentials: the lease is renewed
/// while it can be; at its max TTL, and when a renewal is refused (the
/// lease revoked behind bootplan's back), the credentials are read again —
/// one read for both secrets of the path, so user and password match — the
/// file rendered again and the app told exactly once; on shutdown the held
/// leases are revoked, so the last role can no longer log in. No value is
/// ever printed.
#[test]
fn dynamic_database_credentials_are_renewed_replaced_and_revoked() {
    let Some(pg) = Postgres::start() else { return };
    let Some(bao) = Bao::start_audited() else {
        return;
    };
    let audit = bao.audit_log();
    let token = database_engine(&bao, &pg, "4s", "12s");
    let metrics_port = free_port();
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: leases
telemetry: {{ metrics: {{ listen: "127.0.0.1:{metrics}" }} }}
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ env: T }} }}, revoke_on_exit: true }}
secrets:
  db_user: {{ vault: {{ path: database/creds/app, kv: 1, key: username }}, refresh: lease }}
  db_pass: {{ vault: {{ path: database/creds/app, kv: 1, key: password }}, refresh: lease }}
steps:
  conf:
    template: {{ inline: "{{{{ secrets.db_user }}}}\n{{{{ secrets.db_pass }}}}\n", dest: conn.txt }}
    on_change: {{ reload: {{ signal: HUP, target: app }} }}
  app:
    exec: ["sh", "-c", "trap 'echo hup >> hups' HUP; touch up; while :; do sleep 0.05; done"]
    needs: [conf]
"#,
        addr = bao.addr(),
        metrics = metrics_port,
    ));
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", &token)]);
    wait_until("the app to start", Duration::from_secs(20), || {
        sb.path().join("up").exists()
    });
    let first = credentials(&sb);
    assert!(pg.login(&first.0, &first.1), "the first credentials work");
    assert_eq!(audited(&audit, "database/creds/app"), 1);

    // Renewed while the lease allows, then read again near its max TTL.
    wait_until("two lease renewals", Duration::from_secs(15), || {
        audited(&audit, "sys/leases/renew") >= 2
    });
    assert_eq!(credentials(&sb), first, "a renewal changed nothing");
    wait_until(
        "a fresh read at the max TTL",
        Duration::from_secs(20),
        || credentials(&sb) != first,
    );
    wait_until("the app to be told", Duration::from_secs(5), || {
        !sb.read("hups").is_empty()
    });
    let second = credentials(&sb);
    assert_eq!(sb.read("hups"), "hup\n", "one reload for one new lease");
    assert_eq!(
        audited(&audit, "database/creds/app"),
        2,
        "both secrets of the path share one read"
    );
    assert!(
        pg.login(&second.0, &second.1),
        "the new pair belongs together"
    );

    // Revoked behind bootplan's back: the next renewal is refused, and the
    // credentials are read again at once.
    bao.ok(&["lease", "revoke", "-prefix", "database/creds/app"]);
    wait_until(
        "the revoked role to be dropped",
        Duration::from_secs(10),
        || !pg.login(&second.0, &second.1),
    );
    wait_until(
        "a fresh read after the refused renewal",
        Duration::from_secs(10),
        || credentials(&sb) != second && !credentials(&sb).1.is_empty(),
    );
    wait_until("the app to be told again", Duration::from_secs(5), || {
        sb.read("hups") == "hup\nhup\n"
    });
    let third = credentials(&sb);
    let third_read = unix_now();
    assert!(pg.login(&third.0, &third.1));
    assert_eq!(sb.status()["outcome"], "ready");
    assert_eq!(audited(&audit, "sys/leases/revoke"), 0);
    // The gauge holds the current lease's end: after its read, within its max TTL.
    let end = expiry(metrics_port, "db_pass");
    assert!(
        end > third_read && end < third_read + 14.0,
        "lease end {end}, read at {third_read}"
    );

    sigterm(child.id());
    let out = child.wait_output(Duration::from_secs(20));
    assert!(
        audited(&audit, "sys/leases/revoke") >= 1,
        "the held lease was not revoked"
    );
    wait_until(
        "the last role to be dropped",
        Duration::from_secs(10),
        || !pg.login(&third.0, &third.1),
    );
    let leases = bao.cli(&["list", "sys/leases/lookup/database/creds/app"]);
    assert!(
        !String::from_utf8_lossy(&leases.stdout).contains("Keys")
            || String::from_utf8_lossy(&leases.stdout).lines().count() <= 2,
        "leases left: {}",
        dump(&leases)
    );
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("was not renewed"), "{logs}");
    assert!(logs.contains("near its max TTL"), "{logs}");
    for (user, password) in [&first, &second, &third] {
        assert!(!logs.contains(user.as_str()), "a user name leaked");
        assert!(!logs.contains(password.as_str()), "a password leaked");
    }
    assert!(!logs.contains(&token), "the token leaked");
}

/// A KV v2 secret refreshed every second costs one metadata read per cycle
/// while its version stays: no data read, no rendering, no reload; a new
/// version is still picked up (one data read, one reload).
#[test]
fn an_unchanged_kv2_secret_costs_one_metadata_read_per_refresh() {
    let Some(bao) = Bao::start_audited() else {
        return;
    };
    let audit = bao.audit_log();
    bao.ok(&[
        "kv",
        "put",
        "secret/meta/db",
        "password=metadata-first-value",
    ]);
    bao.ok_with_file(
        &["policy", "write", "meta", "FILE"],
        "meta.hcl",
        "path \"secret/data/meta/*\" { capabilities = [\"read\"] }\n\
         path \"secret/metadata/meta/*\" { capabilities = [\"read\"] }\n",
    );
    let token = bao.ok(&["token", "create", "-policy=meta", "-field=token"]);
    let sb = Sandbox::new();
    kv2_plan(&sb, &bao);
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", &token)]);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("up").exists()
    });
    wait_until("four metadata reads", Duration::from_secs(15), || {
        reads(&audit, "secret/metadata/meta/db") >= 4
    });
    assert_eq!(
        reads(&audit, "secret/data/meta/db"),
        1,
        "an unchanged secret was read again"
    );
    assert_eq!(sb.read("hups"), "");

    bao.ok(&[
        "kv",
        "put",
        "secret/meta/db",
        "password=metadata-second-value",
    ]);
    wait_until("the new value", Duration::from_secs(5), || {
        sb.read("conf.txt") == "metadata-second-value"
    });
    wait_until("the app to be told", Duration::from_secs(5), || {
        sb.read("hups") == "hup\n"
    });
    let after = reads(&audit, "secret/metadata/meta/db");
    wait_until("two more metadata reads", Duration::from_secs(10), || {
        reads(&audit, "secret/metadata/meta/db") >= after + 2
    });
    assert_eq!(reads(&audit, "secret/data/meta/db"), 2);
    assert_eq!(sb.read("hups"), "hup\n");

    sigterm(child.id());
    let out = child.wait_output(Duration::from_secs(20));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(!logs.contains("metadata-first-value"), "{logs}");
    assert!(!logs.contains("metadata-second-value"), "{logs}");
}

/// A policy without metadata access: the refresh falls back to reading the
/// data every cycle, with one warning for the whole run.
#[test]
fn a_policy_without_metadata_access_falls_back_to_data_reads() {
    let Some(bao) = Bao::start_audited() else {
        return;
    };
    let audit = bao.audit_log();
    bao.ok(&[
        "kv",
        "put",
        "secret/meta/db",
        "password=fallback-first-value",
    ]);
    bao.ok_with_file(
        &["policy", "write", "data-only", "FILE"],
        "data-only.hcl",
        "path \"secret/data/meta/*\" { capabilities = [\"read\"] }\n",
    );
    let token = bao.ok(&["token", "create", "-policy=data-only", "-field=token"]);
    let sb = Sandbox::new();
    kv2_plan(&sb, &bao);
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", &token)]);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("up").exists()
    });
    wait_until("three more data reads", Duration::from_secs(15), || {
        reads(&audit, "secret/data/meta/db") >= 4
    });
    bao.ok(&[
        "kv",
        "put",
        "secret/meta/db",
        "password=fallback-second-value",
    ]);
    wait_until("the new value", Duration::from_secs(5), || {
        sb.read("conf.txt") == "fallback-second-value"
    });
    assert_eq!(sb.status()["outcome"], "ready");
    sigterm(child.id());
    let out = child.wait_output(Duration::from_secs(20));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        logs.matches("does not allow reading").count(),
        1,
        "one warning: {logs}"
    );
    assert!(!logs.contains("fallback-first-value"), "{logs}");
}

fn kv2_plan(sb: &Sandbox, bao: &Bao) -> PathBuf {
    sb.plan(&format!(
        r#"
version: 1
name: versions
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ env: T }} }} }}
secrets:
  db: {{ vault: {{ path: secret/meta/db, key: password }}, refresh: 1s }}
steps:
  conf:
    template: {{ inline: "{{{{ secrets.db }}}}", dest: conf.txt }}
    on_change: {{ reload: {{ signal: HUP, target: app }} }}
  app:
    exec: ["sh", "-c", "trap 'echo hup >> hups' HUP; touch up hups; while :; do sleep 0.05; done"]
    needs: [conf]
"#,
        addr = bao.addr()
    ))
}

/// The length and SHA-256 of `value`, as the test program records them.
fn fingerprint(value: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(value.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} {hex}", value.len())
}

/// A secret used in the `env` of a service and of the app: a new value
/// restarts both (a signal cannot change an environment), once each, and
/// the new processes see the new value; the template's HUP to the app is
/// dropped for the restart. The processes record only a length and a hash
/// of their variable, and no value reaches the output.
#[test]
fn a_changed_secret_in_env_restarts_the_service_and_the_app_once() {
    let Some(bao) = Bao::start_audited() else {
        return;
    };
    let audit = bao.audit_log();
    bao.ok(&["kv", "put", "secret/env/db", "password=env-first-value"]);
    let sb = Sandbox::new();
    sb.write(
        "envhash.sh",
        r#"# Records the length and SHA-256 of $DB (never the value), then waits.
printf '%s %s\n' "${#DB}" "$(printf %s "$DB" | sha256sum | cut -d' ' -f1)" >> "$1.env"
trap 'echo hup >> "$1.hups"' HUP
touch "$1.ready"
while :; do sleep 0.05; done
"#,
    );
    sb.plan(&format!(
        r#"
version: 1
name: restarts
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ env: T }} }} }}
secrets:
  db: {{ vault: {{ path: secret/env/db, key: password }}, refresh: 1s }}
steps:
  conf:
    template: {{ inline: "{{{{ secrets.db }}}}", dest: conf.txt }}
    on_change: {{ reload: {{ signal: HUP, target: app }} }}
  svc:
    service: ["sh", "envhash.sh", "svc"]
    env: {{ DB: "{{{{ secrets.db }}}}" }}
    ready: {{ file: svc.ready, interval: 20ms }}
  app:
    exec: ["sh", "envhash.sh", "app"]
    env: {{ DB: "{{{{ secrets.db }}}}" }}
    needs: [conf, svc]
"#,
        addr = bao.addr()
    ));
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", "root")]);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("app.ready").exists()
    });
    let first = fingerprint("env-first-value");
    assert_eq!(sb.read("svc.env"), format!("{first}\n"));
    assert_eq!(sb.read("app.env"), format!("{first}\n"));

    bao.ok(&["kv", "put", "secret/env/db", "password=env-second-value"]);
    let second = fingerprint("env-second-value");
    let both = format!("{first}\n{second}\n");
    wait_until("both to start again", Duration::from_secs(10), || {
        sb.read("svc.env") == both && sb.read("app.env") == both
    });
    assert_eq!(sb.read("conf.txt"), "env-second-value");
    // Two more refresh cycles: nothing starts a third time.
    let cycles = reads(&audit, "secret/metadata/env/db");
    wait_until("two more refreshes", Duration::from_secs(10), || {
        reads(&audit, "secret/metadata/env/db") >= cycles + 2
    });
    assert_eq!(sb.read("svc.env"), both, "the service restarted twice");
    assert_eq!(sb.read("app.env"), both, "the app restarted twice");
    assert_eq!(sb.read("app.hups"), "", "a restarted app was signalled too");
    assert_eq!(sb.status()["outcome"], "ready");

    sigterm(child.id());
    let out = child.wait_output(Duration::from_secs(20));
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("restarted service `svc`"), "{logs}");
    assert!(logs.contains("supervising `sh` again"), "{logs}");
    for value in ["env-first-value", "env-second-value"] {
        assert!(!logs.contains(value), "{value} leaked: {logs}");
    }
}

/// A Secrets Manager secret refreshed every second (moto): while its
/// `AWSCURRENT` version stays, each refresh is one `DescribeSecret` and no
/// `GetSecretValue` (the fetch histogram counts value reads only); a new
/// version is read once and the app told once.
#[test]
fn an_unchanged_secrets_manager_secret_is_not_read_again() {
    let Some(moto) = crate::secrets::Moto::start() else {
        return;
    };
    moto.boto("sm.create_secret(Name='rot/db', SecretString='sm-first-value')\n");
    let metrics_port = free_port();
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: sm-versions
telemetry: {{ metrics: {{ listen: "127.0.0.1:{metrics_port}" }} }}
backends:
  aws: {{ region: us-east-1, endpoints: {{ secretsmanager: "{moto}" }} }}
secrets:
  db: {{ aws_secretsmanager: {{ id: rot/db }}, refresh: 1s }}
steps:
  conf:
    template: {{ inline: "{{{{ secrets.db }}}}", dest: conf.txt }}
    on_change: {{ reload: {{ signal: HUP, target: app }} }}
  app:
    exec: ["sh", "-c", "trap 'echo hup >> hups' HUP; touch up hups; while :; do sleep 0.05; done"]
    needs: [conf]
"#,
        moto = moto.url()
    ));
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &env);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("up").exists()
    });
    let reads = || {
        metric(
            metrics_port,
            "bootplan_secret_fetch_duration_seconds_count{",
            "backend=\"aws_secretsmanager\"",
        )
        .unwrap_or(0.0)
    };
    let unchanged = || {
        metric(
            metrics_port,
            "bootplan_secret_rotations_total{",
            "outcome=\"unchanged\"",
        )
        .unwrap_or(0.0)
    };
    wait_until("three unchanged refreshes", Duration::from_secs(15), || {
        unchanged() >= 3.0
    });
    assert_eq!(reads(), 1.0, "an unchanged secret was read again");

    moto.boto("sm.put_secret_value(SecretId='rot/db', SecretString='sm-second-value')\n");
    wait_until("the new value", Duration::from_secs(5), || {
        sb.read("conf.txt") == "sm-second-value"
    });
    wait_until("the app to be told", Duration::from_secs(5), || {
        sb.read("hups") == "hup\n"
    });
    let before = unchanged();
    wait_until("two more refreshes", Duration::from_secs(10), || {
        unchanged() >= before + 2.0
    });
    assert_eq!(reads(), 2.0);
    assert_eq!(sb.read("hups"), "hup\n");

    sigterm(child.id());
    let out = child.wait_output(Duration::from_secs(20));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(!logs.contains("sm-first-value"), "{logs}");
    assert!(!logs.contains("sm-second-value"), "{logs}");
}

/// `reload: { restart: SERVICE }`: a service that reads its file only when
/// it starts is restarted once when the file is rendered again, and its
/// new process reads the new file.
#[test]
fn a_restart_reload_starts_the_service_again_with_the_new_file() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["kv", "put", "secret/file/db", "password=file-first-value"]);
    let sb = Sandbox::new();
    sb.write(
        "reader.sh",
        r#"# Records the length and SHA-256 of conf.txt as it starts, then waits.
printf '%s %s\n' "$(wc -c < conf.txt)" "$(sha256sum < conf.txt | cut -d' ' -f1)" >> starts
touch svc.ready
while :; do sleep 0.05; done
"#,
    );
    sb.plan(&format!(
        r#"
version: 1
name: restart-reload
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ env: T }} }} }}
secrets:
  db: {{ vault: {{ path: secret/file/db, key: password }}, refresh: 1s }}
steps:
  conf:
    template: {{ inline: "{{{{ secrets.db }}}}", dest: conf.txt }}
    on_change: {{ reload: {{ restart: svc }} }}
  svc:
    service: ["sh", "reader.sh"]
    ready: {{ file: svc.ready, interval: 20ms }}
    needs: [conf]
"#,
        addr = bao.addr()
    ));
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", "root")]);
    wait_until("the service to start", Duration::from_secs(15), || {
        sb.path().join("svc.ready").exists()
    });
    let first = fingerprint("file-first-value");
    assert_eq!(sb.read("starts"), format!("{first}\n"));
    bao.ok(&["kv", "put", "secret/file/db", "password=file-second-value"]);
    let both = format!("{first}\n{}\n", fingerprint("file-second-value"));
    wait_until(
        "the service to start again",
        Duration::from_secs(10),
        || sb.read("starts") == both,
    );
    sigterm(child.id());
    let out = child.wait_output(Duration::from_secs(20));
    assert_eq!(sb.read("starts"), both, "restarted more than once");
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("restarted service `svc`"), "{logs}");
    assert!(!logs.contains("file-second-value"), "{logs}");
}
