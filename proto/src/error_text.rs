//! Errors as one line for people: a binary's last words, and the errors
//! that carry a gRPC status in log fields.

use std::error::Error;

/// The error and its causes on one line, each said once: a wrapper often
/// repeats its source's text in its own message (object_store's and
/// rusqlite's errors do), and printing every link of such a chain said the
/// same thing up to four times.
///
/// A gRPC status says its message (or, without one, its code), not tonic's
/// `code: '…', message: "…"` form; its source (a transport error) follows.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(current) = cause {
        let text = match current.downcast_ref::<tonic::Status>() {
            Some(status) if !status.message().is_empty() => status.message().to_string(),
            Some(status) => status.code().description().to_string(),
            None => current.to_string(),
        };
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

    #[test]
    fn a_status_says_its_message_and_the_transport_error_under_it() {
        let status = tonic::Status::not_found("job job-nope not found");
        assert_eq!(one_line(&status), "job job-nope not found");
        let bare = tonic::Status::new(tonic::Code::Unavailable, "");
        assert_eq!(one_line(&bare), tonic::Code::Unavailable.description());
        let mut refused = tonic::Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(Link(
            "transport error",
            Some(Box::new(Link(
                "tcp connect error",
                Some(Box::new(Link("Connection refused (os error 111)", None))),
            ))),
        )));
        assert_eq!(
            one_line(&refused),
            "tcp connect error: transport error: Connection refused (os error 111)"
        );
    }
}
