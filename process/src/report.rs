//! How a binary reports the error it stops on.

use std::error::Error;

/// The error and its causes on one line, each said once: a wrapper often
/// repeats its source's text in its own message (object_store's and
/// rusqlite's errors do), and printing every link of such a chain said the
/// same thing up to four times.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(current) = cause {
        let text = current.to_string();
        if !line.contains(text.as_str()) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug)]
    struct Link(&'static str, Option<Box<Link>>);

    impl std::fmt::Display for Link {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Link {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn causes_already_said_are_left_out_and_new_ones_kept() {
        let chain = Link(
            "reading s3://shop/catalog: 403 Forbidden",
            Some(Box::new(Link(
                "403 Forbidden",
                Some(Box::new(Link("the token expired", None))),
            ))),
        );
        assert_eq!(
            one_line(&chain),
            "reading s3://shop/catalog: 403 Forbidden: the token expired"
        );
        assert_eq!(one_line(&Link("alone", None)), "alone");
    }
}
