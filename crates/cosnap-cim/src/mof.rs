//! A small, bounded MOF (DSP0221) parser for the subset `schema/cosnap.mof` uses:
//! `#pragma` lines (skipped), qualifier declarations, and class declarations with
//! qualifiers, properties (scalar, array, reference, default values) and methods with
//! parameters. Instances, aliases and associations-by-instance are not supported.
//!
//! The result is the classes as written (local members only); [`crate::schema`](mod@crate::schema) resolves
//! inheritance.

use thiserror::Error;

use crate::value::{CimType, Value};

/// Largest MOF text accepted.
pub const MAX_MOF_BYTES: usize = 4 * 1024 * 1024;
/// Most elements in one `{…}` array value.
const MAX_ARRAY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("MOF line {line}: {message}")]
/// Why a MOF text was refused, with the line it was refused at.
pub struct MofError {
    /// The 1-based line of the MOF text the error is on.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// A qualifier value as written, before typing against its declaration.
#[derive(Debug, Clone, PartialEq)]
pub enum MofValue {
    /// The `NULL` literal.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer literal (decimal or `0x` hex), wide enough for every CIM integer type.
    Int(i128),
    /// A real-number literal.
    Real(f64),
    /// A string literal, escapes resolved and adjacent literals joined.
    Str(String),
    /// A `{…}` array of literals.
    Array(Vec<MofValue>),
}

/// `[Name(value)]` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct MofQualifier {
    /// The qualifier's name.
    pub name: String,
    /// The value in parentheses or braces; `None` when written bare (`[Key]`).
    pub value: Option<MofValue>,
}

/// Qualifier flavors (DSP0004): defaults EnableOverride, ToSubclass, not Translatable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flavor {
    /// EnableOverride: subclasses may give the qualifier another value.
    pub overridable: bool,
    /// ToSubclass: the qualifier propagates to subclasses.
    pub tosubclass: bool,
    /// Translatable: the qualifier's value may be localised.
    pub translatable: bool,
}

impl Default for Flavor {
    fn default() -> Self {
        Self {
            overridable: true,
            tosubclass: true,
            translatable: false,
        }
    }
}

/// `Qualifier Name : type[] = default, Scope(...), Flavor(...);`
#[derive(Debug, Clone, PartialEq)]
pub struct QualifierDecl {
    /// The declared qualifier's name.
    pub name: String,
    /// The qualifier's CIM type.
    pub ty: CimType,
    /// Whether the qualifier takes an array of `ty`.
    pub is_array: bool,
    /// The value a bare use of the qualifier takes.
    pub default: Option<MofValue>,
    /// The elements the qualifier may be put on (`class`, `property`, `method`, …).
    pub scopes: Vec<String>,
    /// The qualifier's flavors.
    pub flavor: Flavor,
}

#[derive(Debug, Clone, PartialEq)]
/// A method parameter as written in MOF, before resolution against the schema.
pub struct MofParameter {
    /// The qualifiers written on the parameter.
    pub qualifiers: Vec<MofQualifier>,
    /// The parameter's CIM type (element type for arrays).
    pub ty: CimType,
    /// For `ClassName REF` parameters: the class referred to.
    pub reference_class: Option<String>,
    /// The parameter's name.
    pub name: String,
    /// Whether the parameter is declared with `[]`.
    pub is_array: bool,
}

#[derive(Debug, Clone, PartialEq)]
/// A class property as written in MOF, before resolution against the schema.
pub struct MofProperty {
    /// The qualifiers written on the property.
    pub qualifiers: Vec<MofQualifier>,
    /// The property's CIM type (element type for arrays).
    pub ty: CimType,
    /// For `ClassName REF` properties: the class referred to.
    pub reference_class: Option<String>,
    /// The property's name.
    pub name: String,
    /// Whether the property is declared with `[]`.
    pub is_array: bool,
    /// The default value after `=`, when written.
    pub default: Option<MofValue>,
}

#[derive(Debug, Clone, PartialEq)]
/// An extrinsic method as written in MOF.
pub struct MofMethod {
    /// The qualifiers written on the method.
    pub qualifiers: Vec<MofQualifier>,
    /// The method's return type.
    pub return_type: CimType,
    /// The method's name.
    pub name: String,
    /// The method's parameters, in declaration order.
    pub parameters: Vec<MofParameter>,
}

#[derive(Debug, Clone, PartialEq)]
/// A class declaration as written in MOF: only its own members, not inherited ones.
pub struct MofClass {
    /// The qualifiers written on the class.
    pub qualifiers: Vec<MofQualifier>,
    /// The class's name.
    pub name: String,
    /// The class after `:`, when it derives from one.
    pub superclass: Option<String>,
    /// The properties the class itself declares.
    pub properties: Vec<MofProperty>,
    /// The methods the class itself declares.
    pub methods: Vec<MofMethod>,
}

/// Everything a MOF file declares, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MofFile {
    /// The qualifier declarations, in order.
    pub qualifiers: Vec<QualifierDecl>,
    /// The class declarations, in order.
    pub classes: Vec<MofClass>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i128),
    Real(f64),
    Punct(char),
}

struct Lexer<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, msg: impl Into<String>) -> MofError {
        MofError {
            line: self.line,
            message: msg.into(),
        }
    }

    fn skip_ws(&mut self) -> Result<(), MofError> {
        loop {
            match self.s.get(self.pos) {
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(c) if c.is_ascii_whitespace() => self.pos += 1,
                Some(b'/') if self.s.get(self.pos + 1) == Some(&b'/') => {
                    while self.pos < self.s.len() && self.s[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                Some(b'/') if self.s.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    loop {
                        match self.s.get(self.pos) {
                            None => return Err(self.err("unterminated comment")),
                            Some(b'*') if self.s.get(self.pos + 1) == Some(&b'/') => {
                                self.pos += 2;
                                break;
                            }
                            Some(b'\n') => {
                                self.line += 1;
                                self.pos += 1;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn next(&mut self) -> Result<Option<(Tok, usize)>, MofError> {
        self.skip_ws()?;
        let line = self.line;
        let Some(&c) = self.s.get(self.pos) else {
            return Ok(None);
        };
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            let start = self.pos;
            while self.pos < self.s.len()
                && (self.s[self.pos].is_ascii_alphanumeric() || self.s[self.pos] == b'_')
            {
                self.pos += 1;
            }
            Tok::Ident(self.text[start..self.pos].to_string())
        } else if c.is_ascii_digit()
            || ((c == b'-' || c == b'+')
                && self.s.get(self.pos + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = self.pos;
            self.pos += 1;
            while self.pos < self.s.len()
                && (self.s[self.pos].is_ascii_alphanumeric()
                    || matches!(self.s[self.pos], b'.' | b'+' | b'-'))
            {
                // A sign only continues a number right after an exponent marker.
                if matches!(self.s[self.pos], b'+' | b'-')
                    && !matches!(self.s[self.pos - 1], b'e' | b'E')
                {
                    break;
                }
                self.pos += 1;
            }
            let t = &self.text[start..self.pos];
            let (neg, digits) = match t.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, t.strip_prefix('+').unwrap_or(t)),
            };
            let int = if let Some(h) = digits
                .strip_prefix("0x")
                .or_else(|| digits.strip_prefix("0X"))
            {
                i128::from_str_radix(h, 16).ok()
            } else {
                digits.parse::<i128>().ok()
            };
            match int {
                Some(n) => Tok::Int(if neg { -n } else { n }),
                None => Tok::Real(
                    t.parse()
                        .map_err(|_| self.err(format!("bad number {t:?}")))?,
                ),
            }
        } else if c == b'"' {
            self.pos += 1;
            let mut out = String::new();
            loop {
                let rest = &self.text[self.pos..];
                let Some(ch) = rest.chars().next() else {
                    return Err(self.err("unterminated string"));
                };
                self.pos += ch.len_utf8();
                match ch {
                    '"' => break,
                    '\n' => return Err(self.err("newline inside a string")),
                    '\\' => {
                        let e = self.text[self.pos..]
                            .chars()
                            .next()
                            .ok_or_else(|| self.err("unterminated string"))?;
                        self.pos += e.len_utf8();
                        out.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            'b' => '\u{8}',
                            'f' => '\u{c}',
                            '"' | '\\' | '\'' => e,
                            _ => return Err(self.err(format!("unknown escape \\{e}"))),
                        });
                    }
                    c => out.push(c),
                }
            }
            Tok::Str(out)
        } else if b"{}()[];,:=#".contains(&c) {
            self.pos += 1;
            Tok::Punct(c as char)
        } else {
            return Err(self.err(format!("unexpected character {:?}", c as char)));
        };
        Ok(Some((tok, line)))
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    i: usize,
}

impl Parser {
    fn line(&self) -> usize {
        self.toks
            .get(self.i)
            .or(self.toks.last())
            .map_or(1, |t| t.1)
    }
    fn err(&self, msg: impl Into<String>) -> MofError {
        MofError {
            line: self.line(),
            message: msg.into(),
        }
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.0)
    }
    fn next(&mut self) -> Result<Tok, MofError> {
        let t = self
            .toks
            .get(self.i)
            .map(|t| t.0.clone())
            .ok_or_else(|| self.err("unexpected end of MOF"))?;
        self.i += 1;
        Ok(t)
    }
    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn punct(&mut self, c: char) -> Result<(), MofError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{c}', found {:?}", self.peek())))
        }
    }
    fn ident(&mut self) -> Result<String, MofError> {
        match self.next()? {
            Tok::Ident(s) => Ok(s),
            t => {
                self.i -= 1;
                Err(self.err(format!("expected a name, found {t:?}")))
            }
        }
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }

    fn value(&mut self) -> Result<MofValue, MofError> {
        if self.eat_punct('{') {
            let mut items = Vec::new();
            if !self.eat_punct('}') {
                loop {
                    if items.len() >= MAX_ARRAY {
                        return Err(self.err("array value too long"));
                    }
                    items.push(self.value()?);
                    if self.eat_punct('}') {
                        break;
                    }
                    self.punct(',')?;
                }
            }
            return Ok(MofValue::Array(items));
        }
        match self.next()? {
            Tok::Str(mut s) => {
                while let Some(Tok::Str(more)) = self.peek() {
                    s.push_str(more);
                    self.i += 1;
                }
                Ok(MofValue::Str(s))
            }
            Tok::Int(n) => Ok(MofValue::Int(n)),
            Tok::Real(f) => Ok(MofValue::Real(f)),
            Tok::Ident(s) if s.eq_ignore_ascii_case("true") => Ok(MofValue::Bool(true)),
            Tok::Ident(s) if s.eq_ignore_ascii_case("false") => Ok(MofValue::Bool(false)),
            Tok::Ident(s) if s.eq_ignore_ascii_case("null") => Ok(MofValue::Null),
            t => Err(self.err(format!("expected a value, found {t:?}"))),
        }
    }

    fn qualifier_list(&mut self) -> Result<Vec<MofQualifier>, MofError> {
        let mut out = Vec::new();
        if !self.eat_punct('[') {
            return Ok(out);
        }
        loop {
            let name = self.ident()?;
            let value = if self.eat_punct('(') {
                let v = self.value()?;
                self.punct(')')?;
                Some(v)
            } else if self.is_punct('{') {
                Some(self.value()?)
            } else {
                None
            };
            out.push(MofQualifier { name, value });
            if self.eat_punct(']') {
                return Ok(out);
            }
            self.punct(',')?;
        }
    }

    fn cim_type(&mut self) -> Result<CimType, MofError> {
        let name = self.ident()?;
        CimType::from_name(&name)
            .filter(|t| *t != CimType::Reference)
            .ok_or_else(|| self.err(format!("{name:?} is not a CIM type")))
    }

    fn array_suffix(&mut self) -> Result<bool, MofError> {
        if self.eat_punct('[') {
            if let Some(Tok::Int(_)) = self.peek() {
                self.i += 1;
            }
            self.punct(']')?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn qualifier_decl(&mut self) -> Result<QualifierDecl, MofError> {
        self.ident()?; // "Qualifier"
        let name = self.ident()?;
        self.punct(':')?;
        let ty = self.cim_type()?;
        let is_array = self.array_suffix()?;
        let default = if self.eat_punct('=') {
            Some(self.value()?)
        } else {
            None
        };
        let mut scopes = Vec::new();
        let mut flavor = Flavor::default();
        while self.eat_punct(',') {
            let kw = self.ident()?;
            self.punct('(')?;
            let mut words = Vec::new();
            loop {
                words.push(self.ident()?);
                if self.eat_punct(')') {
                    break;
                }
                self.punct(',')?;
            }
            if kw.eq_ignore_ascii_case("scope") {
                scopes = words;
            } else if kw.eq_ignore_ascii_case("flavor") {
                for w in words {
                    match w.to_ascii_lowercase().as_str() {
                        "disableoverride" => flavor.overridable = false,
                        "enableoverride" => flavor.overridable = true,
                        "restricted" => flavor.tosubclass = false,
                        "tosubclass" => flavor.tosubclass = true,
                        "translatable" => flavor.translatable = true,
                        _ => return Err(self.err(format!("unknown flavor {w}"))),
                    }
                }
            } else {
                return Err(self.err(format!("expected Scope or Flavor, found {kw}")));
            }
        }
        self.punct(';')?;
        Ok(QualifierDecl {
            name,
            ty,
            is_array,
            default,
            scopes,
            flavor,
        })
    }

    /// `type name` or `Class REF name`.
    fn typed_name(&mut self) -> Result<(CimType, Option<String>, String), MofError> {
        let first = self.ident()?;
        if self.is_kw("ref") {
            self.i += 1;
            let name = self.ident()?;
            return Ok((CimType::Reference, Some(first), name));
        }
        let ty = CimType::from_name(&first)
            .filter(|t| *t != CimType::Reference)
            .ok_or_else(|| self.err(format!("{first:?} is not a CIM type")))?;
        Ok((ty, None, self.ident()?))
    }

    fn class_decl(&mut self, qualifiers: Vec<MofQualifier>) -> Result<MofClass, MofError> {
        self.ident()?; // "class"
        let name = self.ident()?;
        let superclass = if self.eat_punct(':') {
            Some(self.ident()?)
        } else {
            None
        };
        self.punct('{')?;
        let mut class = MofClass {
            qualifiers,
            name,
            superclass,
            properties: Vec::new(),
            methods: Vec::new(),
        };
        while !self.eat_punct('}') {
            let quals = self.qualifier_list()?;
            let (ty, reference_class, name) = self.typed_name()?;
            if self.eat_punct('(') {
                if reference_class.is_some() {
                    return Err(self.err("a method cannot return a reference"));
                }
                let mut parameters = Vec::new();
                if !self.eat_punct(')') {
                    loop {
                        let pq = self.qualifier_list()?;
                        let (pty, prc, pname) = self.typed_name()?;
                        let is_array = self.array_suffix()?;
                        parameters.push(MofParameter {
                            qualifiers: pq,
                            ty: pty,
                            reference_class: prc,
                            name: pname,
                            is_array,
                        });
                        if self.eat_punct(')') {
                            break;
                        }
                        self.punct(',')?;
                    }
                }
                self.punct(';')?;
                class.methods.push(MofMethod {
                    qualifiers: quals,
                    return_type: ty,
                    name,
                    parameters,
                });
            } else {
                let is_array = self.array_suffix()?;
                let default = if self.eat_punct('=') {
                    Some(self.value()?)
                } else {
                    None
                };
                self.punct(';')?;
                class.properties.push(MofProperty {
                    qualifiers: quals,
                    ty,
                    reference_class,
                    name,
                    is_array,
                    default,
                });
            }
        }
        self.punct(';')?;
        Ok(class)
    }
}

/// Parses MOF text.
pub fn parse(text: &str) -> Result<MofFile, MofError> {
    if text.len() > MAX_MOF_BYTES {
        return Err(MofError {
            line: 0,
            message: format!("MOF text is {} bytes; at most {MAX_MOF_BYTES}", text.len()),
        });
    }
    let mut lx = Lexer {
        s: text.as_bytes(),
        text,
        pos: 0,
        line: 1,
    };
    let mut toks = Vec::new();
    while let Some(t) = lx.next()? {
        toks.push(t);
    }
    let mut p = Parser { toks, i: 0 };
    let mut file = MofFile::default();
    while p.peek().is_some() {
        if p.eat_punct('#') {
            // #pragma name("value")
            p.ident()?;
            p.ident()?;
            p.punct('(')?;
            p.value()?;
            p.punct(')')?;
            continue;
        }
        if p.is_kw("qualifier") {
            file.qualifiers.push(p.qualifier_decl()?);
            continue;
        }
        let quals = p.qualifier_list()?;
        if p.is_kw("class") {
            file.classes.push(p.class_decl(quals)?);
        } else {
            return Err(p.err(format!(
                "expected a class or qualifier declaration, found {:?}",
                p.peek()
            )));
        }
    }
    Ok(file)
}

/// Converts a MOF value to a typed CIM value (qualifier values, property defaults).
pub fn to_value(v: &MofValue, ty: CimType, is_array: bool) -> Result<Option<Value>, String> {
    if let MofValue::Null = v {
        return Ok(None);
    }
    if is_array {
        let items = match v {
            MofValue::Array(items) => items.as_slice(),
            other => std::slice::from_ref(other),
        };
        let mut out = Vec::new();
        for i in items {
            if let Some(v) = to_value(i, ty, false)? {
                out.push(v);
            }
        }
        return Ok(Some(Value::Array(out)));
    }
    let text = match v {
        MofValue::Bool(b) => b.to_string(),
        MofValue::Int(n) => n.to_string(),
        MofValue::Real(f) => f.to_string(),
        MofValue::Str(s) => s.clone(),
        MofValue::Array(_) => {
            return Err(format!("an array where a single {} is expected", ty.name()));
        }
        MofValue::Null => unreachable!(),
    };
    if ty == CimType::String && !matches!(v, MofValue::Str(_)) {
        return Err(format!("expected a string, got {text}"));
    }
    crate::xml::parse_scalar(&text, ty)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset() {
        let f = parse(
            r#"
            #pragma locale ("en_US")
            // comment
            Qualifier Key : boolean = false, Scope(property, reference), Flavor(DisableOverride, ToSubclass);
            Qualifier ValueMap : string[], Scope(property, method, parameter);
            /* block
               comment */
            [Abstract, Description("A " "B")]
            class CIM_A {
                [Key, MaxLen(256)] string InstanceID;
                uint16 States[] = {1, 2};
                sint32 Neg = -5;
                CIM_A REF Other;
                [ValueMap{"0", "1"}] uint32 Do([In] string X, [In, Out] CIM_A REF Y, [Out] string Errs[]);
            };
            class CIM_B : CIM_A { };
            "#,
        )
        .unwrap();
        assert_eq!(f.qualifiers.len(), 2);
        assert!(!f.qualifiers[0].flavor.overridable);
        assert!(f.qualifiers[1].is_array);
        let a = &f.classes[0];
        assert_eq!(a.qualifiers[1].value, Some(MofValue::Str("A B".into())));
        assert_eq!(a.properties.len(), 4);
        assert_eq!(
            a.properties[1].default,
            Some(MofValue::Array(vec![MofValue::Int(1), MofValue::Int(2)]))
        );
        assert_eq!(a.properties[2].default, Some(MofValue::Int(-5)));
        assert_eq!(a.properties[3].reference_class.as_deref(), Some("CIM_A"));
        let m = &a.methods[0];
        assert_eq!(m.parameters.len(), 3);
        assert!(m.parameters[2].is_array);
        assert_eq!(m.parameters[1].ty, CimType::Reference);
        assert_eq!(f.classes[1].superclass.as_deref(), Some("CIM_A"));
    }

    #[test]
    fn errors_have_lines() {
        let e = parse("class A {\n  string X\n};").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(parse("class A { foo X; };").is_err());
        assert!(parse("\"unterminated").is_err());
        assert!(parse("/* open").is_err());
        assert!(parse("class A { string X = {1,2; };").is_err());
        assert!(parse(&"[".repeat(100)).is_err());
    }
}
