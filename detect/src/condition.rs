//! A rule's `condition`: `and`, `or`, `not`, parentheses, `1 of` / `all of`
//! a name, a `name_*` wildcard or `them`, compiled against the rule's
//! detection names into a tree of indices.

/// A compiled condition over the rule's detection items (by index).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    Item(usize),
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

impl Cond {
    /// Evaluates with `item(i)` telling whether detection item `i` matched.
    pub(crate) fn eval(&self, item: &mut impl FnMut(usize) -> bool) -> bool {
        match self {
            Cond::Item(i) => item(*i),
            Cond::Not(c) => !c.eval(item),
            Cond::And(cs) => cs.iter().all(|c| c.eval(item)),
            Cond::Or(cs) => cs.iter().any(|c| c.eval(item)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    And,
    Or,
    Not,
    One,
    All,
    Of,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            '|' => return Err("aggregations (`| count() ...`) are not supported".into()),
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '(' || c == ')' || c == '|' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(match word.as_str() {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "not" => Token::Not,
                    "1" | "any" => Token::One,
                    "all" => Token::All,
                    "of" => Token::Of,
                    _ => Token::Word(word),
                });
            }
        }
    }
    Ok(out)
}

/// Parses `text` against the rule's detection item `names`.
pub(crate) fn parse(text: &str, names: &[String]) -> Result<Cond, String> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        names,
    };
    let cond = p.or()?;
    match p.tokens.get(p.pos) {
        None => Ok(cond),
        Some(t) => Err(format!("unexpected {t:?} in condition `{text}`")),
    }
}

struct Parser<'n> {
    tokens: Vec<Token>,
    pos: usize,
    names: &'n [String],
}

impl Parser<'_> {
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn or(&mut self) -> Result<Cond, String> {
        let mut terms = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            terms.push(self.and()?);
        }
        Ok(flatten(terms, Cond::Or))
    }

    fn and(&mut self) -> Result<Cond, String> {
        let mut terms = vec![self.unary()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            terms.push(self.unary()?);
        }
        Ok(flatten(terms, Cond::And))
    }

    fn unary(&mut self) -> Result<Cond, String> {
        match self.next() {
            Some(Token::Not) => Ok(Cond::Not(Box::new(self.unary()?))),
            Some(Token::Open) => {
                let inner = self.or()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err("missing `)` in condition".into()),
                }
            }
            Some(quant @ (Token::One | Token::All)) => {
                if self.next() != Some(Token::Of) {
                    return Err("`1`/`all` must be followed by `of`".into());
                }
                let Some(Token::Word(pattern)) = self.next() else {
                    return Err("`of` must be followed by a name, a name_* or `them`".into());
                };
                let items = self.resolve(&pattern)?;
                let items = items.into_iter().map(Cond::Item).collect();
                Ok(if quant == Token::All {
                    flatten(items, Cond::And)
                } else {
                    flatten(items, Cond::Or)
                })
            }
            Some(Token::Word(name)) => self
                .names
                .iter()
                .position(|n| *n == name)
                .map(Cond::Item)
                .ok_or_else(|| format!("condition names `{name}`, which is not in the detection")),
            Some(t) => Err(format!("unexpected {t:?} in condition")),
            None => Err("condition ends too early".into()),
        }
    }

    /// The items `pattern` (`them`, a name, or a name with `*`) stands for.
    fn resolve(&self, pattern: &str) -> Result<Vec<usize>, String> {
        let found: Vec<usize> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| pattern == "them" || glob(pattern, n))
            .map(|(i, _)| i)
            .collect();
        if found.is_empty() {
            return Err(format!("`of {pattern}` matches no detection item"));
        }
        Ok(found)
    }
}

fn flatten(mut terms: Vec<Cond>, make: fn(Vec<Cond>) -> Cond) -> Cond {
    if terms.len() == 1 {
        terms.remove(0)
    } else {
        make(terms)
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn eval(text: &str, items: &[&str], hits: &[bool]) -> bool {
        let cond = parse(text, &names(items)).expect("parses");
        cond.eval(&mut |i| hits[i])
    }

    #[test]
    fn precedence_is_not_and_or_with_parentheses() {
        let n = ["a", "b", "c"];
        assert!(eval("a or b and c", &n, &[true, false, false]));
        assert!(!eval("(a or b) and c", &n, &[true, false, false]));
        assert!(eval("not a and b", &n, &[false, true, false]));
        assert!(!eval("not (a or b)", &n, &[false, true, false]));
        assert!(eval("a and not b", &n, &[true, false, true]));
    }

    #[test]
    fn one_of_all_of_wildcards_and_them() {
        let n = ["selection_a", "selection_b", "filter_x"];
        assert!(eval("1 of selection_*", &n, &[false, true, false]));
        assert!(!eval("all of selection_*", &n, &[false, true, false]));
        assert!(eval(
            "all of selection_* and not 1 of filter_*",
            &n,
            &[true, true, false]
        ));
        assert!(!eval(
            "all of selection_* and not 1 of filter_*",
            &n,
            &[true, true, true]
        ));
        assert!(eval("all of them", &n, &[true, true, true]));
        assert!(!eval("all of them", &n, &[true, true, false]));
        assert!(eval("any of them", &n, &[false, false, true]));
        assert!(eval("1 of selection*", &n, &[true, false, false]));
    }

    #[test]
    fn errors_name_the_problem() {
        let n = names(&["selection"]);
        let err = |t: &str| parse(t, &n).expect_err("refused");
        assert!(err("selection and nope").contains("`nope`"));
        assert!(err("1 of filter_*").contains("matches no detection item"));
        assert!(err("selection | count() > 5").contains("aggregations"));
        assert!(err("(selection").contains("`)`"));
        assert!(err("selection selection").contains("unexpected"));
        assert!(err("selection and").contains("too early"));
    }
}
