//! The WQL subset ExecQuery accepts:
//!
//! ```text
//! SELECT * | prop [, prop]… FROM Class [WHERE cond]
//! cond := term { OR term };  term := factor { AND factor }
//! factor := NOT factor | ( cond ) | prop op literal | literal op prop | prop IS [NOT] NULL
//! op := = | <> | != | < | <= | > | >=
//! literal := 'text' | "text" | integer | real | TRUE | FALSE | NULL
//! ```
//!
//! Decisions (WMI's WQL is the model): keywords and property names are case-insensitive;
//! string comparison is case-insensitive, as WMI compares; a comparison with a NULL
//! property value is false (except `IS NULL`); comparing a number with a string, or
//! naming a property the class lacks, is an invalid query (CIM_ERR_INVALID_QUERY 15).

use cosnap_cim::{ClassDef, Instance, ObjectPath, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i128),
    Real(f64),
    Bool(bool),
    Null,
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
pub enum Cond {
    Cmp { prop: String, op: Op, lit: Literal },
    IsNull { prop: String, negated: bool },
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `None` = `*`.
    pub properties: Option<Vec<String>>,
    pub class_name: String,
    pub condition: Option<Cond>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WQL query: {0}")]
pub struct QueryError(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Star,
    Comma,
    LParen,
    RParen,
    Op(Op),
}

const MAX_QUERY_LEN: usize = 16 * 1024;
const MAX_NESTING: usize = 64;

fn tokenize(q: &str) -> Result<Vec<Tok>, QueryError> {
    if q.len() > MAX_QUERY_LEN {
        return Err(QueryError(format!("longer than {MAX_QUERY_LEN} bytes")));
    }
    let mut toks = Vec::new();
    let cs: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '*' => {
                toks.push(Tok::Star);
                i += 1
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1
            }
            '(' => {
                toks.push(Tok::LParen);
                i += 1
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1
            }
            '=' => {
                toks.push(Tok::Op(Op::Eq));
                i += 1
            }
            '<' | '>' | '!' => {
                let next = cs.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('<', Some('>')) => (Op::Ne, 2),
                    ('<', Some('=')) => (Op::Le, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('>', _) => (Op::Gt, 1),
                    ('!', Some('=')) => (Op::Ne, 2),
                    _ => return Err(QueryError(format!("unexpected '{c}'"))),
                };
                toks.push(Tok::Op(op));
                i += len;
            }
            '\'' | '"' => toks.push(Tok::Str(lex_string(&cs, &mut i)?)),
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+')
                    && cs
                        .get(i + 1)
                        .is_some_and(|n| n.is_ascii_digit() || *n == '.'))
                || c == '.' =>
            {
                let start = i;
                i += 1;
                while i < cs.len()
                    && (cs[i].is_ascii_alphanumeric()
                        || cs[i] == '.'
                        || ((cs[i] == '-' || cs[i] == '+') && matches!(cs[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                toks.push(Tok::Num(cs[start..i].iter().collect()));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                    i += 1;
                }
                toks.push(Tok::Ident(cs[start..i].iter().collect()));
            }
            other => return Err(QueryError(format!("unexpected character {other:?}"))),
        }
    }
    Ok(toks)
}

/// Reads the string literal whose opening quote is at `*i`, leaving `*i` after its closing
/// quote.
fn lex_string(cs: &[char], i: &mut usize) -> Result<String, QueryError> {
    let quote = cs[*i];
    let mut s = String::new();
    *i += 1;
    loop {
        match cs.get(*i) {
            None => return Err(QueryError("unterminated string literal".into())),
            Some('\\') if matches!(cs.get(*i + 1), Some(&n) if n == quote || n == '\\') => {
                s.push(cs[*i + 1]);
                *i += 2;
            }
            Some(&ch) if ch == quote => {
                // SQL style doubled quote inside the literal.
                if cs.get(*i + 1) == Some(&quote) {
                    s.push(quote);
                    *i += 2;
                } else {
                    *i += 1;
                    return Ok(s);
                }
            }
            Some(&ch) => {
                s.push(ch);
                *i += 1;
            }
        }
    }
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_keyword(&mut self, kw: &str) -> Result<(), QueryError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(QueryError(format!("expected {kw}")))
        }
    }
    fn ident(&mut self, what: &str) -> Result<String, QueryError> {
        match self.next() {
            Some(Tok::Ident(s)) if !is_reserved(&s) => Ok(s),
            other => Err(QueryError(format!(
                "expected {what}, found {}",
                describe(other.as_ref())
            ))),
        }
    }

    fn cond(&mut self, depth: usize) -> Result<Cond, QueryError> {
        let mut left = self.term(depth)?;
        while self.keyword("OR") {
            let right = self.term(depth)?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn term(&mut self, depth: usize) -> Result<Cond, QueryError> {
        let mut left = self.factor(depth)?;
        while self.keyword("AND") {
            let right = self.factor(depth)?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn factor(&mut self, depth: usize) -> Result<Cond, QueryError> {
        if depth > MAX_NESTING {
            return Err(QueryError(format!(
                "nested deeper than {MAX_NESTING} levels"
            )));
        }
        if self.keyword("NOT") {
            return Ok(Cond::Not(Box::new(self.factor(depth + 1)?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let c = self.cond(depth + 1)?;
            match self.next() {
                Some(Tok::RParen) => return Ok(c),
                other => {
                    return Err(QueryError(format!(
                        "expected ')', found {}",
                        describe(other.as_ref())
                    )));
                }
            }
        }
        // literal op prop
        if let Some(lit) = self.try_literal()? {
            let op = self.op()?;
            let prop = self.ident("a property name")?;
            return Ok(Cond::Cmp {
                prop,
                op: flip(op),
                lit,
            });
        }
        let prop = self.ident("a property name")?;
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Cond::IsNull { prop, negated });
        }
        let op = self.op()?;
        let lit = self
            .try_literal()?
            .ok_or_else(|| QueryError(format!("expected a literal after {prop}")))?;
        Ok(Cond::Cmp { prop, op, lit })
    }
    fn op(&mut self) -> Result<Op, QueryError> {
        match self.next() {
            Some(Tok::Op(op)) => Ok(op),
            other => Err(QueryError(format!(
                "expected a comparison operator, found {}",
                describe(other.as_ref())
            ))),
        }
    }
    fn try_literal(&mut self) -> Result<Option<Literal>, QueryError> {
        let lit = match self.peek() {
            Some(Tok::Str(s)) => Literal::Str(s.clone()),
            Some(Tok::Num(n)) => parse_number(n)?,
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("TRUE") => Literal::Bool(true),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("FALSE") => Literal::Bool(false),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("NULL") => Literal::Null,
            _ => return Ok(None),
        };
        self.pos += 1;
        Ok(Some(lit))
    }
}

fn flip(op: Op) -> Op {
    match op {
        Op::Lt => Op::Gt,
        Op::Le => Op::Ge,
        Op::Gt => Op::Lt,
        Op::Ge => Op::Le,
        o => o,
    }
}

fn is_reserved(s: &str) -> bool {
    [
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IS", "NULL", "TRUE", "FALSE",
    ]
    .iter()
    .any(|k| k.eq_ignore_ascii_case(s))
}

fn describe(t: Option<&Tok>) -> String {
    match t {
        None => "the end of the query".into(),
        Some(Tok::Ident(s)) => format!("'{s}'"),
        Some(Tok::Str(s)) => format!("string '{s}'"),
        Some(Tok::Num(s)) => format!("number {s}"),
        Some(Tok::Star) => "'*'".into(),
        Some(Tok::Comma) => "','".into(),
        Some(Tok::LParen) => "'('".into(),
        Some(Tok::RParen) => "')'".into(),
        Some(Tok::Op(_)) => "an operator".into(),
    }
}

fn parse_number(n: &str) -> Result<Literal, QueryError> {
    if let Ok(i) = n.parse::<i128>() {
        return Ok(Literal::Int(i));
    }
    match n.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Literal::Real(f)),
        _ => Err(QueryError(format!("{n} is not a number"))),
    }
}

/// Parses a WQL query text.
pub fn parse(q: &str) -> Result<Query, QueryError> {
    let mut p = Parser {
        toks: tokenize(q)?,
        pos: 0,
    };
    p.expect_keyword("SELECT")?;
    let properties = if p.peek() == Some(&Tok::Star) {
        p.pos += 1;
        None
    } else {
        let mut props = vec![p.ident("a property name or *")?];
        while p.peek() == Some(&Tok::Comma) {
            p.pos += 1;
            props.push(p.ident("a property name")?);
        }
        Some(props)
    };
    p.expect_keyword("FROM")?;
    let class_name = p.ident("a class name")?;
    let condition = if p.keyword("WHERE") {
        Some(p.cond(0)?)
    } else {
        None
    };
    if let Some(t) = p.peek() {
        return Err(QueryError(format!(
            "unexpected {} after the query",
            describe(Some(t))
        )));
    }
    Ok(Query {
        properties,
        class_name,
        condition,
    })
}

impl Query {
    /// Checks every property the query names against the class.
    pub fn check(&self, class: &ClassDef) -> Result<(), QueryError> {
        let mut names: Vec<&str> = self
            .properties
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        fn walk<'a>(c: &'a Cond, out: &mut Vec<&'a str>) {
            match c {
                Cond::Cmp { prop, .. } | Cond::IsNull { prop, .. } => out.push(prop),
                Cond::And(a, b) | Cond::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Cond::Not(a) => walk(a, out),
            }
        }
        if let Some(c) = &self.condition {
            walk(c, &mut names);
        }
        for n in names {
            if class.property(n).is_none() {
                return Err(QueryError(format!(
                    "class {} has no property {n}",
                    class.name
                )));
            }
        }
        Ok(())
    }

    /// Whether an instance satisfies the WHERE clause.
    pub fn matches(&self, inst: &Instance) -> Result<bool, QueryError> {
        match &self.condition {
            None => Ok(true),
            Some(c) => eval(c, inst),
        }
    }

    /// The one instance the WHERE clause pins down: every key of `class` compared for
    /// equality with a string, number or boolean in the clause's top-level AND chain.
    /// `None` when a key is left open (or is a reference), so the caller scans.
    pub fn key_path(&self, class: &ClassDef) -> Option<ObjectPath> {
        fn conjuncts<'a>(c: &'a Cond, out: &mut Vec<(&'a str, &'a Literal)>) {
            match c {
                Cond::And(a, b) => {
                    conjuncts(a, out);
                    conjuncts(b, out);
                }
                Cond::Cmp {
                    prop,
                    op: Op::Eq,
                    lit,
                } => out.push((prop, lit)),
                _ => {}
            }
        }
        let mut equal = Vec::new();
        conjuncts(self.condition.as_ref()?, &mut equal);
        let mut path = ObjectPath::new(class.name.clone());
        for key in class.keys() {
            let (_, lit) = equal
                .iter()
                .find(|(p, _)| p.eq_ignore_ascii_case(&key.name))?;
            let text = match lit {
                Literal::Str(s) => s.clone(),
                Literal::Int(i) => i.to_string(),
                Literal::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
                Literal::Real(_) | Literal::Null => return None,
            };
            path = path.with_key(&key.name, Value::String(text));
        }
        (!path.keys.is_empty()).then_some(path)
    }

    /// Keeps only the selected properties (all for `*`).
    pub fn project(&self, inst: &mut Instance) {
        if let Some(props) = &self.properties {
            inst.properties
                .retain(|p| props.iter().any(|n| n.eq_ignore_ascii_case(&p.name)));
        }
    }
}

fn eval(c: &Cond, inst: &Instance) -> Result<bool, QueryError> {
    Ok(match c {
        Cond::And(a, b) => eval(a, inst)? && eval(b, inst)?,
        Cond::Or(a, b) => eval(a, inst)? || eval(b, inst)?,
        Cond::Not(a) => !eval(a, inst)?,
        Cond::IsNull { prop, negated } => inst.get(prop).is_none() != *negated,
        Cond::Cmp { prop, op, lit } => match (inst.get(prop), lit) {
            (None, _) | (_, Literal::Null) => false,
            (Some(v), lit) => compare(v, lit, prop)?.is_some_and(|ord| apply(*op, ord)),
        },
    })
}

fn apply(op: Op, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => ord == Equal,
        Op::Ne => ord != Equal,
        Op::Lt => ord == Less,
        Op::Le => ord != Greater,
        Op::Gt => ord == Greater,
        Op::Ge => ord != Less,
    }
}

fn int_of(v: &Value) -> Option<i128> {
    Some(match *v {
        Value::Uint8(x) => x.into(),
        Value::Uint16(x) => x.into(),
        Value::Uint32(x) => x.into(),
        Value::Uint64(x) => x.into(),
        Value::Sint8(x) => x.into(),
        Value::Sint16(x) => x.into(),
        Value::Sint32(x) => x.into(),
        Value::Sint64(x) => x.into(),
        _ => return None,
    })
}

/// Orders a property value against a literal; `None` = not comparable for this value
/// (e.g. an array), which makes the comparison false.
fn compare(v: &Value, lit: &Literal, prop: &str) -> Result<Option<std::cmp::Ordering>, QueryError> {
    let mismatch = || QueryError(format!("property {prop} cannot be compared with {lit:?}"));
    Ok(match (v, lit) {
        (Value::Array(_), _) | (Value::Instance(_), _) => None,
        (Value::Boolean(b), Literal::Bool(l)) => Some(b.cmp(l)),
        (Value::Boolean(_), _) => return Err(mismatch()),
        (Value::Real32(_) | Value::Real64(_), Literal::Int(_) | Literal::Real(_)) => {
            let x = match *v {
                Value::Real32(f) => f64::from(f),
                Value::Real64(f) => f,
                _ => unreachable!(),
            };
            let y = match *lit {
                Literal::Int(i) => i as f64,
                Literal::Real(f) => f,
                _ => unreachable!(),
            };
            x.partial_cmp(&y)
        }
        (v, Literal::Int(i)) if int_of(v).is_some() => int_of(v).map(|x| x.cmp(i)),
        (v, Literal::Real(f)) if int_of(v).is_some() => {
            int_of(v).and_then(|x| (x as f64).partial_cmp(f))
        }
        (Value::String(s) | Value::Datetime(s), Literal::Str(l)) => {
            Some(s.to_lowercase().cmp(&l.to_lowercase()))
        }
        (Value::Char16(c), Literal::Str(l)) => {
            Some(c.to_string().to_lowercase().cmp(&l.to_lowercase()))
        }
        (Value::Reference(p), Literal::Str(l)) => {
            // A reference compares as its WMI path text; a literal that parses as a path
            // compares by class and keys instead, so host and spelling do not matter.
            match cosnap_cim::ObjectPath::parse(l) {
                Ok(lp) => Some(if same_path(p, &lp) {
                    std::cmp::Ordering::Equal
                } else {
                    std::cmp::Ordering::Less
                }),
                Err(_) => Some(p.to_wmi_text().to_lowercase().cmp(&l.to_lowercase())),
            }
        }
        _ => return Err(mismatch()),
    })
}

fn same_path(a: &cosnap_cim::ObjectPath, b: &cosnap_cim::ObjectPath) -> bool {
    a.class_name.eq_ignore_ascii_case(&b.class_name)
        && a.keys.len() == b.keys.len()
        && a.keys.iter().all(|(k, v)| {
            b.key(k)
                .is_some_and(|w| cosnap_cim::xml::scalar_text(v) == cosnap_cim::xml::scalar_text(w))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosnap_cim::CimType;

    fn job(state: u16, name: &str) -> Instance {
        Instance::new("Msvm_ConcreteJob")
            .with("JobState", CimType::Uint16, Some(Value::Uint16(state)))
            .with(
                "InstanceID",
                CimType::String,
                Some(Value::String(name.into())),
            )
            .with("Cancellable", CimType::Boolean, Some(Value::Boolean(true)))
            .with("ErrorDescription", CimType::String, None)
    }

    #[test]
    fn parses_and_evaluates() {
        let q = parse("select InstanceID from Msvm_ConcreteJob where (JobState = 7 or JobState<>4) AND InstanceID = 'J-1'").unwrap();
        assert_eq!(
            q.properties.as_deref(),
            Some(&["InstanceID".to_string()][..])
        );
        assert!(q.matches(&job(7, "j-1")).unwrap());
        assert!(!q.matches(&job(4, "J-1")).unwrap());
        assert!(!q.matches(&job(7, "J-2")).unwrap());
        let q = parse("SELECT * FROM Msvm_ConcreteJob WHERE Cancellable = TRUE AND NOT ErrorDescription IS NOT NULL").unwrap();
        assert!(q.matches(&job(2, "x")).unwrap());
        let q = parse("SELECT * FROM C WHERE 5 < JobState").unwrap();
        assert!(q.matches(&job(7, "x")).unwrap());
        assert!(!q.matches(&job(4, "x")).unwrap());
        let q = parse(r#"SELECT * FROM C WHERE InstanceID = "it's""#).unwrap();
        assert!(q.matches(&job(1, "IT'S")).unwrap());
    }

    #[test]
    fn key_path_only_when_every_key_is_pinned() {
        let class = cosnap_cim::schema().class("Msvm_ComputerSystem").unwrap();
        let q = parse("SELECT * FROM Msvm_ComputerSystem WHERE Name = 'V-1' AND CreationClassName = 'Msvm_ComputerSystem' AND EnabledState = 3").unwrap();
        let path = q.key_path(class).expect("both keys are pinned");
        assert_eq!(path.key_str("Name"), Some("V-1"));
        assert_eq!(
            path.key_str("CreationClassName"),
            Some("Msvm_ComputerSystem")
        );
        for open in [
            "SELECT * FROM Msvm_ComputerSystem",
            "SELECT * FROM Msvm_ComputerSystem WHERE Name = 'V-1'",
            "SELECT * FROM Msvm_ComputerSystem WHERE Name = 'V-1' OR CreationClassName = 'x'",
            "SELECT * FROM Msvm_ComputerSystem WHERE NOT (Name = 'V-1' AND CreationClassName = 'x')",
            "SELECT * FROM Msvm_ComputerSystem WHERE Name <> 'V-1' AND CreationClassName = 'x'",
        ] {
            assert!(parse(open).unwrap().key_path(class).is_none(), "{open}");
        }
    }

    #[test]
    fn type_mismatch_and_syntax_errors() {
        let q = parse("SELECT * FROM C WHERE JobState = 'x'").unwrap();
        assert!(q.matches(&job(1, "a")).is_err());
        for bad in [
            "",
            "SELECT",
            "SELECT * FROM",
            "SELECT * FROM C WHERE",
            "SELECT * FROM C WHERE (A = 1",
            "SELECT * FROM C WHERE A = ",
            "SELECT * FROM C WHERE A = 'x",
            "SELECT * FROM C trailing",
            "DELETE FROM C",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = format!(
            "SELECT * FROM C WHERE {}A = 1{}",
            "(".repeat(500),
            ")".repeat(500)
        );
        assert!(parse(&deep).is_err());
    }
}
