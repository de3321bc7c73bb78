//! `strata sql`: SQL through the `Query` RPC, as one command, a script on stdin, or an
//! interactive shell.
//!
//! ```text
//!  strata sql 'SELECT …; SELECT …'   each statement in order; the first error stops
//!  strata sql -c 'SELECT …'          the same (as psql and DuckDB)
//!  strata sql -f script.sql          statements from a file; the first error stops
//!  strata sql - / … | strata sql     statements from stdin, split at `;`; the first
//!                                    error stops (exit status 1)
//!  strata sql (stdin a terminal)     the shell: line editing, history in
//!                                    $STRATA_HISTORY or ~/.strata_history, statements
//!                                    end at `;` and may span lines; an error is printed
//!                                    and the shell goes on; \q, exit or Ctrl-D quits;
//!                                    Ctrl-C clears the statement being typed or cancels
//!                                    the running one; \dt lists datasets,
//!                                    \d NAME describes one, \x toggles expanded rows,
//!                                    \timing toggles the elapsed time
//! ```
//!
//! The table format shows at most `--max-rows` rows (1000; the rest are counted, not
//! kept) and NULL as `NULL` (an empty string as nothing).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;

use crate::client::{self, Client};
use crate::error::{Error, Result, code_name};
use crate::query::{self, OutputFormat, output_error};
use crate::split::Splitter;

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Statements to run, separated by `;`. `-` reads them from stdin; without QUERY,
    /// stdin is read when it is not a terminal, else the interactive shell starts.
    #[arg(value_name = "QUERY", conflicts_with_all = ["command", "file"])]
    pub query: Option<String>,

    /// Statements to run (as QUERY; psql's and DuckDB's -c).
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SQL",
        conflicts_with = "file"
    )]
    pub command: Option<String>,

    /// Run the statements of FILE (psql's and DuckDB's -f); the first error stops.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Output format [default: table; with --output, from the file's extension].
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,

    /// Write the result to FILE (on this machine) instead of stdout, in the format its
    /// extension names (.parquet, .csv, .json, .ndjson, .arrow) unless --format says.
    /// One statement. `COPY (query) TO 'file' [(FORMAT parquet|csv|json)]` does the
    /// same from the shell or a script.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Rows the table format shows at most (the rest are counted); 0 shows all.
    #[arg(long, value_name = "N", default_value_t = query::DEFAULT_MAX_ROWS)]
    pub max_rows: usize,

    /// The shell's history file [default: $HOME/.strata_history].
    #[arg(long, env = "STRATA_HISTORY", value_name = "FILE")]
    pub history: Option<PathBuf>,
}

/// `strata sql`.
pub async fn run(server: &str, args: SqlArgs) -> Result<()> {
    let format = args.format.unwrap_or_default();
    let stdin = std::io::stdin();
    let interactive = args.query.is_none() && stdin.is_terminal();
    if format == OutputFormat::Arrow && args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(Error::Invalid(
            "--format arrow writes binary Arrow IPC: redirect stdout to a file or a pipe".into(),
        ));
    }
    let display = query::Display {
        max_rows: args.max_rows,
        ..query::Display::default()
    };
    // Read the script before connecting: a missing file is said first.
    let script = match &args.file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?),
        None => None,
    };
    let interactive = interactive && args.command.is_none() && script.is_none();
    let mut client = client::connect(server).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let text = args.command.as_deref().or(args.query.as_deref());
    if let Some(path) = &args.output {
        let statements = match (&script, text) {
            (Some(script), _) => crate::split::split(script),
            (None, Some(text)) if text != "-" => crate::split::split(text),
            _ => {
                let mut all = String::new();
                std::io::Read::read_to_string(&mut stdin.lock(), &mut all)
                    .map_err(|e| Error::io("<stdin>", e))?;
                crate::split::split(&all)
            }
        };
        let [sql] = statements.as_slice() else {
            return Err(Error::Invalid("--output takes one statement".into()));
        };
        let format = args
            .format
            .or_else(|| OutputFormat::of_path(path))
            .unwrap_or_default();
        let outcome = query::export(&mut client, sql, "query failed", format, path).await?;
        eprintln!(
            "wrote {} row{} to {}",
            crate::output::group(outcome.rows),
            if outcome.rows == 1 { "" } else { "s" },
            path.display()
        );
        return Ok(());
    }
    if let Some(script) = script {
        return run_script(&mut client, script.as_bytes(), format, &display, &mut out).await;
    }
    match text {
        Some("-") | None if !interactive => {
            run_script(&mut client, stdin.lock(), format, &display, &mut out).await
        }
        Some(text) => {
            let statements = crate::split::split(text);
            if statements.is_empty() {
                return Err(Error::Invalid("no statement given".into()));
            }
            run_statements(&mut client, statements, format, &display, &mut out).await
        }
        None => {
            let history = args.history.or_else(default_history);
            one_stream_only(format)?;
            let mut editor = Editor::new(history)?;
            let mut stderr = std::io::stderr();
            let mut shell = Shell {
                format,
                display,
                cancel_on_ctrl_c: true,
            };
            shell
                .run(&mut client, &mut editor, &mut out, &mut stderr)
                .await
        }
    }
}

/// `$HOME/.strata_history`, if there is a home.
fn default_history() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".strata_history"))
}

/// What to call statement `i` (0-based) of `n` in an error.
fn context(i: usize, n: Option<usize>) -> String {
    match n {
        Some(1) => "query failed".to_string(),
        Some(n) => format!("statement {} of {n} failed", i + 1),
        None => format!("statement {} failed", i + 1),
    }
}

/// `COPY (query) TO 'file' [[WITH] (FORMAT name)]` (or `COPY table TO …`), run by the
/// client: the query's result is written to `file` on this machine. `None` for any other
/// statement.
pub fn parse_copy(sql: &str) -> Option<Result<(String, PathBuf, Option<OutputFormat>)>> {
    let text = sql.trim().trim_end_matches(';').trim();
    let rest = text
        .get(..4)
        .filter(|w| w.eq_ignore_ascii_case("COPY"))
        .and_then(|_| text.get(4..))?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let bad = |why: &str| {
        Some(Err(Error::Invalid(format!(
            "COPY: {why}; write COPY (query) TO 'file' [(FORMAT parquet|csv|json|ndjson|arrow)]"
        ))))
    };
    // The query in parentheses (quotes may hold parentheses), or a table name.
    let (query, after) = if rest.starts_with('(') {
        let (mut depth, mut quote, mut end) = (0usize, None::<char>, None);
        for (i, c) in rest.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '(') => depth += 1,
                (None, ')') => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return bad("unbalanced parentheses");
        };
        (rest[1..end].trim().to_string(), &rest[end + 1..])
    } else {
        let name_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        (
            format!("SELECT * FROM {}", &rest[..name_end]),
            &rest[name_end..],
        )
    };
    let after = after.trim_start();
    let Some(after) = after
        .get(..2)
        .filter(|w| w.eq_ignore_ascii_case("TO"))
        .and_then(|_| after.get(2..))
    else {
        return bad("expected TO after the query");
    };
    let after = after.trim_start();
    let Some(quoted) = after.strip_prefix('\'') else {
        return bad("expected the file name in single quotes");
    };
    let Some(close) = quoted.find('\'') else {
        return bad("unterminated file name");
    };
    let path = PathBuf::from(&quoted[..close]);
    let options = quoted[close + 1..].trim();
    let options = options
        .get(..4)
        .filter(|w| w.eq_ignore_ascii_case("WITH"))
        .map_or(options, |_| options[4..].trim_start());
    let format = if options.is_empty() {
        None
    } else {
        let inner = options
            .strip_prefix('(')
            .and_then(|o| o.strip_suffix(')'))
            .map(str::trim);
        let name = inner.and_then(|i| {
            let (key, value) = i.split_once(char::is_whitespace)?;
            key.eq_ignore_ascii_case("FORMAT")
                .then(|| value.trim().trim_matches('\'').to_ascii_lowercase())
        });
        match name.as_deref() {
            Some("parquet") => Some(OutputFormat::Parquet),
            Some("csv") => Some(OutputFormat::Csv),
            Some("json") => Some(OutputFormat::Json),
            Some("ndjson") => Some(OutputFormat::Ndjson),
            Some("arrow") => Some(OutputFormat::Arrow),
            _ => return bad("unknown options"),
        }
    };
    Some(Ok((query, path, format)))
}

/// Runs `sql`: a client-side COPY to a file (printing what it wrote to `out`), or a
/// statement whose result goes to `out`.
async fn run_one_statement(
    client: &mut Client,
    sql: &str,
    context: &str,
    format: OutputFormat,
    display: &query::Display,
    out: &mut dyn Write,
) -> Result<()> {
    match parse_copy(sql) {
        Some(copy) => {
            let (query, path, copy_format) = copy?;
            let format = copy_format
                .or_else(|| OutputFormat::of_path(&path))
                .unwrap_or(OutputFormat::Csv);
            let outcome = query::export(client, &query, context, format, &path).await?;
            writeln!(
                out,
                "COPY {}: wrote {} to {}",
                crate::output::group(outcome.rows),
                if outcome.rows == 1 { "row" } else { "rows" },
                path.display()
            )
            .map_err(output_error)
        }
        None => query::run(client, sql, context, format, display, out)
            .await
            .map(|_| ()),
    }
}

/// `--format arrow` writes one Arrow IPC stream, so it takes one statement.
fn one_stream_only(format: OutputFormat) -> Result<()> {
    if format == OutputFormat::Arrow {
        return Err(Error::Invalid(
            "--format arrow writes one Arrow IPC stream: give it one statement".into(),
        ));
    }
    Ok(())
}

/// Runs `statements` in order, writing each result to `out`; stops at the first error.
pub async fn run_statements(
    client: &mut Client,
    statements: Vec<String>,
    format: OutputFormat,
    display: &query::Display,
    out: &mut dyn Write,
) -> Result<()> {
    let n = statements.len();
    if n > 1 {
        one_stream_only(format)?;
    }
    for (i, sql) in statements.iter().enumerate() {
        run_one_statement(client, sql, &context(i, Some(n)), format, display, out).await?;
    }
    Ok(())
}

/// Reads statements from `input`, split at `;` (the last may lack it), and runs each as
/// soon as it is complete; stops at the first error.
pub async fn run_script(
    client: &mut Client,
    mut input: impl BufRead,
    format: OutputFormat,
    display: &query::Display,
    out: &mut dyn Write,
) -> Result<()> {
    let mut splitter = Splitter::new();
    let mut line = String::new();
    let mut i = 0;
    loop {
        line.clear();
        let read = input
            .read_line(&mut line)
            .map_err(|e| Error::io("<stdin>", e))?;
        let statements = if read == 0 {
            splitter.finish().into_iter().collect()
        } else {
            splitter.push(&line)
        };
        for sql in statements {
            if i > 0 {
                one_stream_only(format)?;
            }
            run_one_statement(client, &sql, &context(i, None), format, display, out).await?;
            i += 1;
        }
        if read == 0 {
            return Ok(());
        }
    }
}

/// A line of input to the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Ctrl-C.
    Interrupted,
    /// Ctrl-D, or the end of the input.
    Eof,
}

/// Where the shell's lines come from: the line editor, or a script in tests.
pub trait LineSource {
    fn read_line(&mut self, prompt: &str) -> Result<Line>;
    /// Remembers a complete statement (or shell command) in the history.
    fn remember(&mut self, entry: &str);
}

/// The rustyline editor with a history file.
pub struct Editor {
    editor: rustyline::DefaultEditor,
    history: Option<PathBuf>,
}

impl std::fmt::Debug for Editor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Editor")
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl Editor {
    /// An editor whose history is loaded from, and saved to, `history`.
    pub fn new(history: Option<PathBuf>) -> Result<Self> {
        // PreferTerm: prompts and editing on the terminal even when stdout is redirected
        // (`strata sql > results.txt`).
        let config = rustyline::Config::builder()
            .behavior(rustyline::Behavior::PreferTerm)
            .auto_add_history(false)
            .max_history_size(10_000)
            .map_err(|e| Error::Invalid(format!("line editor: {e}")))?
            .history_ignore_dups(true)
            .map_err(|e| Error::Invalid(format!("line editor: {e}")))?
            .build();
        let mut editor = rustyline::DefaultEditor::with_config(config)
            .map_err(|e| Error::Invalid(format!("cannot start the line editor: {e}")))?;
        if let Some(path) = &history
            && path.exists()
            && let Err(e) = editor.load_history(path)
        {
            eprintln!("note: cannot read the history file {}: {e}", path.display());
        }
        Ok(Self { editor, history })
    }
}

impl Editor {
    /// Entries in the history.
    pub fn history_len(&self) -> usize {
        use rustyline::history::History as _;
        self.editor.history().len()
    }
}

impl LineSource for Editor {
    fn read_line(&mut self, prompt: &str) -> Result<Line> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => Ok(Line::Text(line)),
            Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(ReadlineError::Eof) => Ok(Line::Eof),
            Err(e) => Err(Error::Invalid(format!("cannot read the input: {e}"))),
        }
    }

    fn remember(&mut self, entry: &str) {
        let _ = self.editor.add_history_entry(entry);
        // Saved after every entry, so a shell that is killed keeps its history.
        if let Some(path) = &self.history
            && let Err(e) = self.editor.save_history(path)
        {
            eprintln!(
                "note: cannot write the history file {}: {e}",
                path.display()
            );
            self.history = None;
        }
    }
}

const PROMPT: &str = "strata> ";
const CONTINUATION: &str = "    ..> ";

const HELP: &str = "\
Statements end with `;` and may span lines. Examples:
  SELECT station, max(temperature) FROM weather GROUP BY station;
  SELECT count(*) FROM weather VERSION AS OF 3;        -- or 'tag', TIMESTAMP AS OF '…'
  SELECT * FROM strata_versions('weather');
  RESTORE TABLE weather TO VERSION AS OF 3;
  ALTER TABLE weather CREATE TAG good [AS OF VERSION 3];
Shell commands: \\dt lists the datasets, \\d NAME describes one (columns, keys,
shards, head version), \\x toggles one-row-per-block display, \\timing toggles the
elapsed time, \\q (or exit, quit, Ctrl-D) quits, \\? (or help) shows this.
Ctrl-C clears the statement being typed, or cancels the running one.";

/// The interactive shell.
#[derive(Clone, Debug)]
pub struct Shell {
    pub format: OutputFormat,
    /// How the table format shows results (`\x` and `\timing` change it).
    pub display: query::Display,
    /// Ctrl-C (SIGINT) while a statement runs cancels it. Off in tests.
    pub cancel_on_ctrl_c: bool,
}

impl Shell {
    /// Reads and runs statements until `\q`, `exit` or the end of the input. Errors of
    /// statements are written to `err` with their gRPC code and the shell goes on; only
    /// failing to read the input or to write the output ends it with an error.
    pub async fn run(
        &mut self,
        client: &mut Client,
        input: &mut dyn LineSource,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<()> {
        let mut splitter = Splitter::new();
        // Lines of the statement being typed, as typed, for the history.
        let mut typed = String::new();
        writeln!(
            err,
            "Strata SQL shell. End statements with `;`; \\? for help, \\q to quit."
        )
        .map_err(output_error)?;
        loop {
            let prompt = if splitter.is_empty() {
                PROMPT
            } else {
                CONTINUATION
            };
            let line = match input.read_line(prompt)? {
                Line::Eof => break,
                Line::Interrupted => {
                    splitter.clear();
                    typed.clear();
                    continue;
                }
                Line::Text(line) => line,
            };
            if splitter.is_empty() {
                match line.trim().trim_end_matches(';').trim() {
                    "" => continue,
                    "\\q" | "exit" | "quit" => break,
                    "\\?" | "\\h" | "help" => {
                        input.remember(line.trim());
                        writeln!(err, "{HELP}").map_err(output_error)?;
                        continue;
                    }
                    meta if meta.starts_with('\\') => {
                        input.remember(line.trim());
                        self.meta(client, meta, out, err).await?;
                        continue;
                    }
                    _ => {}
                }
            }
            if !typed.is_empty() {
                typed.push('\n');
            }
            typed.push_str(&line);
            let statements = splitter.push(&format!("{line}\n"));
            if splitter.is_empty() {
                input.remember(typed.trim());
                typed.clear();
            }
            for sql in statements {
                self.run_one(client, &sql, out, err).await?;
            }
        }
        Ok(())
    }

    /// A backslash command other than \q and \?.
    async fn meta(
        &mut self,
        client: &mut Client,
        command: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<()> {
        let (name, arg) = match command.split_once(char::is_whitespace) {
            Some((name, arg)) => (name, arg.trim()),
            None => (command, ""),
        };
        let on_off = |on: bool| if on { "on" } else { "off" };
        match (name, arg) {
            ("\\x", "") => {
                self.display.expanded = !self.display.expanded;
                writeln!(err, "expanded display is {}", on_off(self.display.expanded))
            }
            ("\\timing", "") => {
                self.display.timing = !self.display.timing;
                writeln!(err, "timing is {}", on_off(self.display.timing))
            }
            ("\\dt", "") => {
                let names = client
                    .list_datasets(strata_proto::v1::ListDatasetsRequest {})
                    .await;
                match names {
                    Ok(r) if r.get_ref().names.is_empty() => writeln!(err, "no datasets"),
                    Ok(r) => {
                        for name in &r.get_ref().names {
                            writeln!(out, "{name}").map_err(output_error)?;
                        }
                        Ok(())
                    }
                    Err(s) => writeln!(err, "error: {}: {}", code_name(s.code()), s.message()),
                }
            }
            ("\\d", name) if !name.is_empty() => {
                let info = client
                    .describe_dataset(strata_proto::v1::DescribeDatasetRequest {
                        name: name.trim_matches('"').to_string(),
                    })
                    .await;
                match info {
                    Ok(info) => crate::datasets::write_info(out, info.get_ref()),
                    Err(s) => writeln!(err, "error: {}: {}", code_name(s.code()), s.message()),
                }
            }
            ("\\d", "") => writeln!(err, "usage: \\d NAME (\\dt lists the datasets)"),
            _ => writeln!(err, "unknown command {command}; \\? lists them"),
        }
        .map_err(output_error)?;
        out.flush().map_err(output_error)
    }

    async fn run_one(
        &self,
        client: &mut Client,
        sql: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<()> {
        let result = if self.cancel_on_ctrl_c {
            tokio::select! {
                r = run_one_statement(client, sql, "query failed", self.format, &self.display, out) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            }
        } else {
            Some(
                run_one_statement(client, sql, "query failed", self.format, &self.display, out)
                    .await,
            )
        };
        match result {
            Some(Ok(_)) => Ok(()),
            Some(Err(Error::Status { code, message, .. })) => {
                writeln!(err, "error: {}: {message}", code_name(code)).map_err(output_error)
            }
            Some(Err(e @ (Error::Output(_) | Error::Arrow(_)))) if e.is_broken_pipe() => Err(e),
            Some(Err(e)) => writeln!(err, "error: {e}").map_err(output_error),
            None => {
                // Dropping the call cancels it on the server.
                out.flush().map_err(output_error)?;
                writeln!(err, "cancelled").map_err(output_error)
            }
        }
    }
}
