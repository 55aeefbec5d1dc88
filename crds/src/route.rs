//! Routes: where a module's output messages go on the device's hub, to another module's
//! input or upstream to the cloud, optionally only when a condition on the message holds.
//!
//! A route belongs to the module whose output it reads (`modules[].routes` of an
//! EdgeDeployment), so routes are layered, prioritised, rolled out and rolled back with
//! their module. IoT Edge's
//! `FROM /messages/modules/sensor/outputs/readings WHERE $body.t > 30 INTO BrokeredEndpoint("/modules/filter/inputs/in")`
//! is, under module `sensor`:
//!
//! ```yaml
//! routes:
//! - output: readings
//!   when: "$body.t > 30"
//!   to: {module: filter, input: in}
//! ```
//!
//! and `INTO $upstream` is `to: {upstream: <name>}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::{DNS_LABEL_PATTERN, check_dns_label};

/// The most routes one module's outputs take.
pub const MAX_ROUTES_PER_MODULE: usize = 32;
/// The longest condition accepted.
pub const MAX_CONDITION_LEN: usize = 512;
/// How deep a condition may nest (parentheses and NOT): the parser recurses.
const MAX_DEPTH: usize = 16;

/// One route from an output of the module that carries it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The module's output the route reads (a DNS label).
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub output: String,
    /// Only messages for which this holds are routed (IoT Edge's WHERE): comparisons of
    /// `$body.<field>[.<field>...]` (the JSON body) or a header name with a number, a
    /// quoted string, `true`, `false` or `null`, joined by AND, OR, NOT and parentheses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_CONDITION_LEN))]
    pub when: Option<String>,
    pub to: RouteTarget,
}

/// Where a route delivers: exactly one of a module's input or upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.upstream) != (has(self.module) && has(self.input))",
    "message": "a route goes to a module's input (module and input) or upstream, not both"
}]))]
pub struct RouteTarget {
    /// A module of the same deployment, by its name on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub input: Option<String>,
    /// To the cloud, under this name: `edgefleet.dev.<device>.up.<namespace>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub upstream: Option<String>,
}

/// Where a checked route goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    Input { module: &'a str, input: &'a str },
    Upstream(&'a str),
}

impl Route {
    /// Checks every name and the condition; says what is wrong, naming the route.
    pub fn check(&self) -> Result<Destination<'_>, String> {
        let wrap = |e: String| format!("route from output {:?}: {e}", self.output);
        check_dns_label(&self.output).map_err(|e| wrap(e.to_string()))?;
        if let Some(w) = &self.when {
            Condition::parse(w).map_err(wrap)?;
        }
        let t = &self.to;
        let dest = match (&t.module, &t.input, &t.upstream) {
            (Some(module), Some(input), None) => Destination::Input { module, input },
            (None, None, Some(name)) => Destination::Upstream(name),
            _ => {
                return Err(wrap(
                    "`to` names a module and its input, or upstream, and nothing else".into(),
                ));
            }
        };
        for name in [&t.module, &t.input, &t.upstream].into_iter().flatten() {
            check_dns_label(name).map_err(|e| wrap(e.to_string()))?;
        }
        Ok(dest)
    }
}

/// A parsed `when`: what the device's router evaluates on every message.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
    Compare(Operand, Op, Literal),
}

/// What a comparison reads from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A field of the JSON body, by path.
    Body(Vec<String>),
    /// A message header (an application property).
    Header(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
    Null,
}

impl Condition {
    /// Parses a `when`, bounded in length and depth; the error says where it went wrong.
    pub fn parse(text: &str) -> Result<Condition, String> {
        if text.len() > MAX_CONDITION_LEN {
            return Err(format!(
                "the condition is longer than {MAX_CONDITION_LEN} characters"
            ));
        }
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, at: 0 };
        let c = p.or(0)?;
        match p.tokens.get(p.at) {
            None => Ok(c),
            Some(t) => Err(format!("unexpected {t} after a complete condition")),
        }
    }

    /// Whether the message matches. A field the body lacks, a body that is not JSON, or
    /// values of different kinds compare false (as IoT Edge's undefined does), except `!=`.
    /// The body is parsed at most once, and only when a comparison reads it.
    pub fn holds(&self, body: &[u8], header: &dyn Fn(&str) -> Option<String>) -> bool {
        let parsed = std::cell::OnceCell::new();
        self.eval(body, header, &parsed)
    }

    fn eval(
        &self,
        raw: &[u8],
        header: &dyn Fn(&str) -> Option<String>,
        body: &std::cell::OnceCell<Option<serde_json::Value>>,
    ) -> bool {
        match self {
            Condition::And(a, b) => a.eval(raw, header, body) && b.eval(raw, header, body),
            Condition::Or(a, b) => a.eval(raw, header, body) || b.eval(raw, header, body),
            Condition::Not(c) => !c.eval(raw, header, body),
            Condition::Compare(operand, op, lit) => {
                let value = match operand {
                    Operand::Body(path) => body
                        .get_or_init(|| serde_json::from_slice(raw).ok())
                        .as_ref()
                        .and_then(|v| path.iter().try_fold(v, |v, k| v.get(k)))
                        .cloned(),
                    Operand::Header(name) => header(name).map(serde_json::Value::String),
                };
                compare(value.as_ref(), *op, lit)
            }
        }
    }
}

fn compare(value: Option<&serde_json::Value>, op: Op, lit: &Literal) -> bool {
    use serde_json::Value;
    let ord = match (value, lit) {
        (Some(Value::Number(n)), Literal::Number(l)) => n.as_f64().and_then(|n| n.partial_cmp(l)),
        // A header is text: it compares with a number by its numeric value.
        (Some(Value::String(s)), Literal::Number(l)) => {
            s.trim().parse::<f64>().ok().and_then(|n| n.partial_cmp(l))
        }
        (Some(Value::String(s)), Literal::Text(l)) => Some(s.as_str().cmp(l.as_str())),
        (Some(Value::Bool(b)), Literal::Bool(l)) => Some(b.cmp(l)),
        (Some(Value::Null), Literal::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    };
    match (ord, op) {
        (None, Op::Ne) => true,
        (None, _) => false,
        (Some(o), Op::Eq) => o.is_eq(),
        (Some(o), Op::Ne) => o.is_ne(),
        (Some(o), Op::Lt) => o.is_lt(),
        (Some(o), Op::Le) => o.is_le(),
        (Some(o), Op::Gt) => o.is_gt(),
        (Some(o), Op::Ge) => o.is_ge(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Body(Vec<String>),
    Number(f64),
    Text(String),
    Op(Op),
    Open,
    Close,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "{s:?}"),
            Token::Body(p) => write!(f, "$body.{}", p.join(".")),
            Token::Number(n) => write!(f, "{n}"),
            Token::Text(s) => write!(f, "'{s}'"),
            Token::Op(o) => write!(f, "{o:?}"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                out.push(if c == '(' { Token::Open } else { Token::Close });
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let next = chars.peek().map(|&(_, c)| c);
                let (op, two) = match (c, next) {
                    ('=', _) => (Op::Eq, false),
                    ('!', Some('=')) => (Op::Ne, true),
                    ('<', Some('>')) => (Op::Ne, true),
                    ('<', Some('=')) => (Op::Le, true),
                    ('>', Some('=')) => (Op::Ge, true),
                    ('<', _) => (Op::Lt, false),
                    ('>', _) => (Op::Gt, false),
                    _ => return Err(format!("'!' at {i} must be followed by '='")),
                };
                if two {
                    chars.next();
                }
                out.push(Token::Op(op));
            }
            '\'' | '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, ch)) => s.push(ch),
                        None => return Err(format!("the string starting at {i} is not closed")),
                    }
                }
                out.push(Token::Text(s));
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let mut s = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_ascii_digit() || matches!(d, '-' | '+' | '.' | 'e' | 'E') {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                let n: f64 = s
                    .parse()
                    .map_err(|_| format!("{s:?} at {i} is not a number"))?;
                out.push(Token::Number(n));
            }
            '$' | 'a'..='z' | 'A'..='Z' | '_' => {
                let mut s = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if is_name_char(d) || d == '.' || d == '$' {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(word(&s, i)?);
            }
            _ => return Err(format!("unexpected {c:?} at {i}")),
        }
    }
    Ok(out)
}

/// A word: `$body.a.b`, a header name, or a keyword (kept as an identifier).
fn word(s: &str, at: usize) -> Result<Token, String> {
    if let Some(path) = s.strip_prefix("$body.") {
        let fields: Vec<String> = path.split('.').map(str::to_owned).collect();
        let ok = fields
            .iter()
            .all(|f| !f.is_empty() && f.chars().all(is_name_char));
        return if ok {
            Ok(Token::Body(fields))
        } else {
            Err(format!(
                "{s:?} at {at} is not a $body.<field>[.<field>...] path"
            ))
        };
    }
    if s.chars().all(is_name_char) {
        Ok(Token::Ident(s.to_owned()))
    } else {
        Err(format!(
            "{s:?} at {at}: only $body.<field> paths and header names are known"
        ))
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn keyword(&mut self, k: &str) -> bool {
        let hit =
            matches!(self.tokens.get(self.at), Some(Token::Ident(s)) if s.eq_ignore_ascii_case(k));
        if hit {
            self.at += 1;
        }
        hit
    }

    fn or(&mut self, depth: usize) -> Result<Condition, String> {
        let mut c = self.and(depth)?;
        while self.keyword("or") {
            c = Condition::Or(Box::new(c), Box::new(self.and(depth)?));
        }
        Ok(c)
    }

    fn and(&mut self, depth: usize) -> Result<Condition, String> {
        let mut c = self.unary(depth)?;
        while self.keyword("and") {
            c = Condition::And(Box::new(c), Box::new(self.unary(depth)?));
        }
        Ok(c)
    }

    fn unary(&mut self, depth: usize) -> Result<Condition, String> {
        if depth >= MAX_DEPTH {
            return Err(format!("the condition nests deeper than {MAX_DEPTH}"));
        }
        if self.keyword("not") {
            return Ok(Condition::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.tokens.get(self.at) == Some(&Token::Open) {
            self.at += 1;
            let c = self.or(depth + 1)?;
            return match self.tokens.get(self.at) {
                Some(Token::Close) => {
                    self.at += 1;
                    Ok(c)
                }
                _ => Err("a '(' is not closed".into()),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Condition, String> {
        let operand = match self.tokens.get(self.at).cloned() {
            Some(Token::Body(path)) => Operand::Body(path),
            Some(Token::Ident(name)) if !is_keyword(&name) => Operand::Header(name),
            Some(t) => return Err(format!("expected $body.<field> or a header name, not {t}")),
            None => return Err("the condition ends where a comparison should be".into()),
        };
        self.at += 1;
        let op = match self.tokens.get(self.at) {
            Some(Token::Op(op)) => *op,
            Some(t) => return Err(format!("expected a comparison operator, not {t}")),
            None => return Err("the condition ends where an operator should be".into()),
        };
        self.at += 1;
        let lit = match self.tokens.get(self.at).cloned() {
            Some(Token::Number(n)) => Literal::Number(n),
            Some(Token::Text(s)) => Literal::Text(s),
            Some(Token::Ident(s)) if s.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Token::Ident(s)) if s.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Some(Token::Ident(s)) if s.eq_ignore_ascii_case("null") => Literal::Null,
            Some(t) => {
                return Err(format!(
                    "expected a number, a quoted string, true, false or null, not {t}"
                ));
            }
            None => return Err("the condition ends where a value should be".into()),
        };
        self.at += 1;
        Ok(Condition::Compare(operand, op, lit))
    }
}

fn is_keyword(s: &str) -> bool {
    ["and", "or", "not", "true", "false", "null"]
        .iter()
        .any(|k| s.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(when: &str, body: &str, headers: &[(&str, &str)]) -> bool {
        let c = Condition::parse(when).unwrap_or_else(|e| panic!("{when}: {e}"));
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        c.holds(body.as_bytes(), &header)
    }

    #[test]
    fn conditions_read_the_body_and_headers() {
        let body = r#"{"machine":{"temperature":31.5,"ok":true},"site":"berlin","alarm":null}"#;
        assert!(holds("$body.machine.temperature > 30", body, &[]));
        assert!(!holds("$body.machine.temperature > 40", body, &[]));
        assert!(holds(
            "$body.machine.temperature >= 31.5 AND $body.site = 'berlin'",
            body,
            &[]
        ));
        assert!(holds(
            "$body.site = \"paris\" or $body.machine.ok = true",
            body,
            &[]
        ));
        assert!(holds("NOT ($body.site <> 'berlin')", body, &[]));
        assert!(holds("$body.alarm = null", body, &[]));
        assert!(holds(
            "kind = 'alert' and level >= 2",
            body,
            &[("kind", "alert"), ("level", "3")]
        ));
        assert!(!holds("kind = 'alert'", body, &[]));
    }

    /// A message whose body is not JSON, or lacks the field, matches nothing but `!=`: a
    /// bad message from one module is never routed by accident.
    #[test]
    fn a_missing_field_or_a_body_that_is_not_json_never_matches() {
        assert!(!holds("$body.t > 1", "not json", &[]));
        assert!(!holds("$body.t = 1", r#"{"x":1}"#, &[]));
        assert!(!holds("$body.t > 1", r#"{"t":"hot"}"#, &[]));
        assert!(holds("$body.t != 1", r#"{"x":1}"#, &[]));
    }

    /// The condition is tenant input the device parses: bounded in length and depth, and
    /// anything but the small grammar is refused with where it went wrong.
    #[test]
    fn a_condition_is_bounded_and_anything_else_is_refused() {
        for bad in [
            "",
            "$body.t >",
            "$body.t > 30 and",
            "$body. > 1",
            "$body.t >> 1",
            "$body.t > 'unclosed",
            "$system.t = 1",
            "(($body.t > 1)",
            "$body.t > 1 $body.t",
            "1 = $body.t",
            "and = 1",
            "$body.t ! 1",
            "$body.t = 1; drop",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad:?}");
        }
        let deep = format!("{}$body.t = 1{}", "(".repeat(40), ")".repeat(40));
        assert!(
            Condition::parse(&deep)
                .expect_err("too deep")
                .contains("deeper")
        );
        let nots = format!("{}$body.t = 1", "not ".repeat(40));
        assert!(Condition::parse(&nots).is_err());
        let long = format!("$body.t = '{}'", "x".repeat(600));
        assert!(
            Condition::parse(&long)
                .expect_err("too long")
                .contains("longer")
        );
    }

    #[test]
    fn a_route_goes_to_one_input_or_upstream() {
        let yaml = |s: &str| serde_yaml::from_str::<Route>(s).expect("in the test setup");
        let r = yaml("output: out\nto: {module: filter, input: in}");
        assert_eq!(
            r.check(),
            Ok(Destination::Input {
                module: "filter",
                input: "in"
            })
        );
        let r = yaml("output: out\nwhen: \"$body.t > 1\"\nto: {upstream: alerts}");
        assert_eq!(r.check(), Ok(Destination::Upstream("alerts")));
        for bad in [
            "output: out\nto: {module: filter}",
            "output: out\nto: {module: filter, input: in, upstream: x}",
            "output: out\nto: {}",
            "output: Out\nto: {upstream: x}",
            "output: out\nto: {upstream: 'a.>'}",
            "output: out\nwhen: \"t >\"\nto: {upstream: x}",
        ] {
            assert!(yaml(bad).check().is_err(), "{bad}");
        }
    }
}
