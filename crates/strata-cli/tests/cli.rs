//! The `strata` binary itself against a real server: exit statuses, stdout and stderr as
//! a user or a script sees them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use strata_server::{Server, ServerConfig};

/// Runs `command` (without a home directory) with `stdin` piped in; its output.
async fn run(mut command: Command, stdin: impl Into<Vec<u8>>) -> Output {
    let stdin = stdin.into();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .env("HOME", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// Runs `strata ARGS` against `url` with `stdin` piped in (never a terminal).
async fn strata(url: &str, args: &[&str], stdin: impl Into<Vec<u8>>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command.args(args).env("STRATA_SERVER", url);
    run(command, stdin).await
}

/// A server of the test's own on a fresh data directory (kept while the first value
/// lives), and its URL.
async fn start() -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::ephemeral(dir.path().join("data")))
        .await
        .unwrap();
    let url = server.url();
    (dir, server, url)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_version_commands_from_the_binary() {
    let (dir, server, url) = start().await;

    // Statements from stdin, split at `;`, results as CSV.
    let out = strata(
        &url,
        &["sql", "--format", "csv"],
        "SELECT 1 AS one;\nSELECT 'a;b' AS two\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\n1\ntwo\na;b\n");

    // Bad SQL: exit status 1, the status code and the parser's message on stderr.
    let out = strata(&url, &["sql", "SELEC 1"], "").await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: query failed: INVALID_ARGUMENT: SQL parse error"),
        "{err}"
    );
    assert!(err.contains("SELEC"), "{err}");
    assert!(out.stdout.is_empty());

    // A table, created and written with SQL, then its history.
    let script = "CREATE TABLE t (k VARCHAR NOT NULL, v BIGINT, PRIMARY KEY (k)) WITH (shards = 1);\n\
                  INSERT INTO t VALUES ('a', 1), ('b', 2);\n\
                  INSERT INTO t VALUES ('c', 3);\n";
    let out = strata(&url, &["sql", "-"], script).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tables = text(&out.stdout);
    assert!(tables.contains("| CREATE TABLE |"), "{tables}");

    let out = strata(&url, &["tag", "t", "2", "first_insert"], "").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "tagged t version 2 as first_insert\n");

    let out = strata(&url, &["rollback", "t", "tag:first_insert"], "").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "rolled back t to tag first_insert (version 2): new head version 4\n"
    );
    let out = strata(
        &url,
        &["sql", "--format", "csv", "SELECT k FROM t ORDER BY k"],
        "",
    )
    .await;
    assert_eq!(text(&out.stdout), "k\na\nb\n");
    // -c SQL and -f FILE, as psql and DuckDB take them.
    let out = strata(
        &url,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT k FROM t WHERE k = 'a'",
        ],
        "",
    )
    .await;
    assert_eq!(text(&out.stdout), "k\na\n", "{}", text(&out.stderr));
    let file = dir.path().join("script.sql");
    std::fs::write(&file, "SELECT 1 AS x;\nSELECT 'y' AS y;\n").unwrap();
    let out = strata(
        &url,
        &["sql", "--format", "csv", "-f", file.to_str().unwrap()],
        "",
    )
    .await;
    assert_eq!(text(&out.stdout), "x\n1\ny\ny\n", "{}", text(&out.stderr));
    // --output FILE: the result written on this machine, in its extension's format.
    let parquet = dir.path().join("t.parquet");
    let out = strata(
        &url,
        &[
            "sql",
            "-o",
            parquet.to_str().unwrap(),
            "-c",
            "SELECT k FROM t",
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("wrote 2 rows to"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(&std::fs::read(&parquet).unwrap()[..4], b"PAR1");
    let out = strata(&url, &["sql", "-f", "/nonexistent/script.sql"], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/script.sql"),
        "{}",
        text(&out.stderr)
    );

    let out = strata(&url, &["versions", "t"], "").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let history = text(&out.stdout);
    assert!(history.contains("| rollback  | to=2 "), "{history}");
    assert!(history.contains("first_insert"), "{history}");
    assert!(history.ends_with("4 versions, head 4\n"), "{history}");

    let out = strata(&url, &["rollback", "t", "99"], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: rolling t back to version 99: NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );
    let out = strata(&url, &["tag", "t", "first_insert"], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("strata tag --delete"));

    server.shutdown().await.unwrap();
}

/// Runs `strata ARGS` with extra environment variables and no server preset.
async fn strata_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(&args)
            .env_remove("STRATA_TOKEN")
            .env_remove("STRATA_TLS_CA")
            .env_remove("STRATA_SERVER")
            .envs(env)
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_token_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let out = strata_env(&["tls", "self-signed", "--out", tls.to_str().unwrap()], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `strata token new` prints the token and the entry for the tokens file.
    let out = strata_env(&["token", "new", "--name", "ci", "--role", "read"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let token = printed
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line")
        .to_string();
    let entry = &printed[printed.find("[[token]]").expect("an entry")..];
    std::fs::write(dir.path().join("tokens.toml"), entry).unwrap();
    assert!(
        !entry.contains(&token),
        "the entry holds the hash, not the token"
    );

    let mut config = ServerConfig::ephemeral(dir.path().join("data"));
    config.tls.cert = Some(tls.join("server.pem"));
    config.tls.key = Some(tls.join("server.key"));
    config.auth.tokens_file = Some(dir.path().join("tokens.toml"));
    let server = Server::start(config).await.unwrap();
    let address = format!("localhost:{}", server.addr().port());
    let ca = tls.join("ca.pem");
    let ca = ca.to_str().unwrap();

    let out = strata_env(
        &["sql", "--format", "csv", "SELECT 1 AS one"],
        &[
            ("STRATA_SERVER", &address),
            ("STRATA_TLS_CA", ca),
            ("STRATA_TOKEN", &token),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\n1\n");
    // The same with flags; a read token cannot create.
    let out = strata_env(
        &[
            "--server",
            &address,
            "--tls-ca",
            ca,
            "--token",
            &token,
            "sql",
            "CREATE TABLE x (k TEXT NOT NULL, PRIMARY KEY (k))",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("PERMISSION_DENIED"),
        "{}",
        text(&out.stderr)
    );
    // Without the token: refused; without the CA: the certificate is not trusted.
    let out = strata_env(
        &["sql", "SELECT 1"],
        &[("STRATA_SERVER", &address), ("STRATA_TLS_CA", ca)],
    )
    .await;
    assert!(
        text(&out.stderr).contains("UNAUTHENTICATED"),
        "{}",
        text(&out.stderr)
    );
    let out = strata_env(
        &["sql", "SELECT 1"],
        &[
            ("STRATA_SERVER", &format!("https://{address}")),
            ("STRATA_TOKEN", &token),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    server.shutdown().await.unwrap();
}

/// The interactive shell in a pseudo-terminal (so stdin is a terminal, as a user's is):
/// lines typed one by one, what the screen shows read back. Driven by Python's `pty`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_in_a_terminal() {
    let (_dir, server, url) = start().await;
    let out = strata(
        &url,
        &["sql", "-c", "CREATE TABLE readings (sensor VARCHAR, v DOUBLE, PRIMARY KEY (sensor)); INSERT INTO readings VALUES ('a', NULL), ('b', 2.5)"],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    const DRIVER: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
screen = b""
def read(seconds):
    global screen
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            screen += data
read(2.0)
for line in sys.stdin.read().splitlines():
    os.write(fd, line.encode() + b"\r")
    read(1.5)
read(1.0)
os.waitpid(pid, 0)
sys.stdout.buffer.write(screen)
"#;
    let typed = "\\dt\n\\d readings\n\\x\nSELECT * FROM readings ORDER BY sensor;\n\\q\n";
    let mut python = Command::new("python3");
    python
        .args([
            "-c",
            DRIVER,
            env!("CARGO_BIN_EXE_strata"),
            "--server",
            &url,
            "sql",
        ])
        .env("TERM", "dumb");
    let screen = run(python, typed).await;
    assert!(screen.status.success(), "{}", text(&screen.stderr));
    let screen = text(&screen.stdout).replace("\r\n", "\n");
    assert!(screen.contains("Strata SQL shell"), "{screen}");
    assert!(
        screen.contains("\nreadings\n"),
        "\\dt lists the dataset: {screen}"
    );
    assert!(
        screen.contains("partition key  sensor"),
        "\\d describes it: {screen}"
    );
    assert!(screen.contains("expanded display is on"), "{screen}");
    assert!(screen.contains("-[ RECORD 1 ]"), "{screen}");
    assert!(
        screen.contains("v      | NULL"),
        "NULL shown as NULL: {screen}"
    );
    assert!(screen.contains("v      | 2.5"), "{screen}");
    server.shutdown().await.unwrap();
}

/// `strata completions SHELL` prints a completion script; `--server` on `serve` is
/// refused with the flag it meant, and not listed by `serve --help`.
#[tokio::test]
async fn completions_and_a_misplaced_server_flag() {
    let out = strata("http://127.0.0.1:1", &["completions", "bash"], "").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(
        script.contains("_strata()") && script.contains("watch"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = strata(
        "http://127.0.0.1:1",
        &[
            "serve",
            "--server",
            "127.0.0.1:7777",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--listen"),
        "{}",
        text(&out.stderr)
    );
    let out = strata("http://127.0.0.1:1", &["serve", "--help"], "").await;
    let help = text(&out.stdout);
    assert!(
        help.contains("--listen") && !help.contains("--server"),
        "{help}"
    );
    let out = strata("http://127.0.0.1:1", &["--version"], "").await;
    assert!(
        text(&out.stdout).contains("(commit "),
        "{}",
        text(&out.stdout)
    );
}

/// `strata ingest DATASET -` reads CSV or NDJSON from standard input (gzip recognised by
/// its bytes), as a pipeline writes it; it needs --format, and Parquet, whose footer
/// comes last, is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_from_standard_input() {
    let (_dir, server, url) = start().await;
    let out = strata(
        &url,
        &[
            "sql",
            "CREATE TABLE s (k VARCHAR, t BIGINT, v DOUBLE, PRIMARY KEY ((k), t))",
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let csv = "v,k,t\n1.5,a,1\nNA,a,2\n";
    let out = strata(&url, &["ingest", "s", "-", "--format", "csv"], csv).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("version"),
        "{}",
        text(&out.stdout)
    );

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"k\": \"b\", \"t\": 1, \"v\": 2.5}\n{\"k\": \"b\", \"t\": 2}\n")
        .unwrap();
    let out = strata(
        &url,
        &["ingest", "s", "-", "--format", "json"],
        gz.finish().unwrap(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = strata(
        &url,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT k, t, v FROM s ORDER BY k, t",
        ],
        "",
    )
    .await;
    assert_eq!(text(&out.stdout), "k,t,v\na,1,1.5\na,2,\nb,1,2.5\nb,2,\n");

    for (args, wanted) in [
        (&["ingest", "s", "-"][..], "pass --format"),
        (&["ingest", "s", "-", "--format", "parquet"][..], "footer"),
        (
            &["ingest", "s", "-", "-", "--format", "csv"][..],
            "only once",
        ),
        (
            &["ingest", "s", "-", "--format", "csv"][..],
            "standard input: column \"nope\"",
        ),
    ] {
        let out = strata(&url, args, "k,t,v,nope\na,9,1,1\n").await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    server.shutdown().await.unwrap();
}
