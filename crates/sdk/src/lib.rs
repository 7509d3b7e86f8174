//! `crat-sdk`: the client library an integrator embeds.
