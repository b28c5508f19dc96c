//! `delegate_source!`: a `mio::event::Source` for an enum of sources, each call handed to
//! whichever variant it holds. Streams, listeners and transports are each such an enum;
//! written out by hand, the three impls were the same thirty lines three times.

/// `delegate_source!(Type, Type::A, Type::B)` implements `Source` for `Type` by matching
/// on the listed one-field variants.
macro_rules! delegate_source {
    ($type:ty, $($variant:path),+ $(,)?) => {
        impl mio::event::Source for $type {
            fn register(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interest: mio::Interest,
            ) -> std::io::Result<()> {
                match self {
                    $($variant(inner) => inner.register(registry, token, interest),)+
                }
            }

            fn reregister(
                &mut self,
                registry: &mio::Registry,
                token: mio::Token,
                interest: mio::Interest,
            ) -> std::io::Result<()> {
                match self {
                    $($variant(inner) => inner.reregister(registry, token, interest),)+
                }
            }

            fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
                match self {
                    $($variant(inner) => inner.deregister(registry),)+
                }
            }
        }
    };
}

pub(crate) use delegate_source;
