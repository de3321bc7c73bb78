//! Cutting SQL text into statements at `;`, for the shell and for scripts on stdin.
//!
//! A `;` ends a statement unless it is inside a string literal (`'it''s; fine'`), a
//! quoted identifier (`"a;b"`), a line comment (`-- …`) or a block comment (`/* … */`).
//! Text arrives in pieces (lines typed in the shell, lines read from stdin), so the
//! splitter keeps the unfinished statement and its lexical state between pieces.

/// Where the scanner is, lexically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Code,
    /// Inside `'…'`.
    Literal,
    /// Inside `"…"`.
    Identifier,
    /// After `--`, until the end of the line.
    LineComment,
    /// Inside `/* … */`, nested to this depth.
    BlockComment(u32),
}

/// Accumulates SQL text and hands out each statement once its `;` has arrived.
#[derive(Clone, Debug, Default)]
pub struct Splitter {
    /// The unfinished statement.
    pending: String,
    state: State,
    /// Whether `pending` holds anything but whitespace and comments.
    content: bool,
}

impl Splitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `text` and returns the statements it completed, in order, without their `;`,
    /// comments before them, or surrounding whitespace. Statements of nothing but
    /// whitespace and comments are dropped.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        let mut done = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let next = chars.peek().copied();
            match self.state {
                State::Code => match c {
                    ';' => {
                        let statement = std::mem::take(&mut self.pending);
                        if self.content {
                            done.push(statement.trim().to_string());
                        }
                        self.content = false;
                        continue;
                    }
                    '\'' => {
                        self.state = State::Literal;
                        self.start();
                    }
                    '"' => {
                        self.state = State::Identifier;
                        self.start();
                    }
                    '-' if next == Some('-') => {
                        self.state = State::LineComment;
                        self.pending.push(c);
                        self.pending.extend(chars.next());
                        continue;
                    }
                    '/' if next == Some('*') => {
                        self.state = State::BlockComment(1);
                        self.pending.push(c);
                        self.pending.extend(chars.next());
                        continue;
                    }
                    c if c.is_whitespace() => {}
                    _ => self.start(),
                },
                State::Literal => {
                    // A doubled quote inside a literal is an escaped quote: leaving and
                    // re-entering the literal at once handles it.
                    if c == '\'' {
                        self.state = State::Code;
                    }
                }
                State::Identifier => {
                    if c == '"' {
                        self.state = State::Code;
                    }
                }
                State::LineComment => {
                    if c == '\n' {
                        self.state = State::Code;
                    }
                }
                State::BlockComment(depth) => {
                    if c == '*' && next == Some('/') {
                        self.state = if depth == 1 {
                            State::Code
                        } else {
                            State::BlockComment(depth - 1)
                        };
                        self.pending.push(c);
                        self.pending.extend(chars.next());
                        continue;
                    }
                    if c == '/' && next == Some('*') {
                        self.state = State::BlockComment(depth + 1);
                        self.pending.push(c);
                        self.pending.extend(chars.next());
                        continue;
                    }
                }
            }
            self.pending.push(c);
        }
        done
    }

    /// The statement's first significant character is next: comments and whitespace
    /// before it are dropped.
    fn start(&mut self) {
        if !self.content {
            self.pending.clear();
            self.content = true;
        }
    }

    /// True when no statement has been started (only whitespace and comments, if
    /// anything, since the last `;`).
    pub fn is_empty(&self) -> bool {
        !self.content && self.state == State::Code
    }

    /// The unfinished statement, if it has any content: what remains at the end of a
    /// script without a final `;`.
    pub fn finish(&mut self) -> Option<String> {
        let statement = std::mem::take(&mut self.pending);
        let content = std::mem::take(&mut self.content);
        self.state = State::Code;
        content.then(|| statement.trim().to_string())
    }

    /// Forgets the unfinished statement.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Every statement of `text`, including a last one without `;`.
pub fn split(text: &str) -> Vec<String> {
    let mut splitter = Splitter::new();
    let mut statements = splitter.push(text);
    statements.extend(splitter.finish());
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(
            split("SELECT 1; SELECT 'a;b', \"c;d\" FROM t;SELECT 3"),
            ["SELECT 1", "SELECT 'a;b', \"c;d\" FROM t", "SELECT 3"]
        );
        assert_eq!(split("SELECT 'it''s; ok';"), ["SELECT 'it''s; ok'"]);
        assert_eq!(
            split("-- leading comments go\n/* too */ SELECT 1 -- not; the end\n, 2;"),
            ["SELECT 1 -- not; the end\n, 2"]
        );
        assert_eq!(
            split("SELECT /* a; /* nested; */ still; */ 1;"),
            ["SELECT /* a; /* nested; */ still; */ 1"]
        );
        // Empty statements and comment-only ones are dropped.
        assert_eq!(
            split(" ; ;\n-- just a comment\n; /* x */ ;"),
            Vec::<String>::new()
        );
        assert_eq!(split(""), Vec::<String>::new());
    }

    #[test]
    fn statements_span_pushes() {
        let mut s = Splitter::new();
        assert!(s.is_empty());
        assert!(s.push("SELECT station,\n").is_empty());
        assert!(!s.is_empty());
        assert!(s.push("  count(*) FROM 'x;\n").is_empty());
        assert!(!s.is_empty(), "inside a literal");
        assert_eq!(
            s.push("y' GROUP BY 1; SELECT 2;\n"),
            [
                "SELECT station,\n  count(*) FROM 'x;\ny' GROUP BY 1",
                "SELECT 2"
            ]
        );
        assert!(s.is_empty());
        assert!(s.push("-- comment only\n").is_empty());
        assert!(s.is_empty(), "a comment starts no statement");
        s.push("SELECT 3");
        assert_eq!(s.finish().as_deref(), Some("SELECT 3"));
        assert!(s.is_empty());
        s.push("SELECT 4");
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.finish(), None);
    }
}
