//! service-a as a program and under systemd's protocols: the checks both
//! daemons share (testkit's `program` and `systemd` modules), run against
//! the binary cargo builds for these tests from the current source.

const SERVICE_A: testkit::Daemon = testkit::Daemon {
    name: "service-a",
    bin: env!("CARGO_BIN_EXE_service-a"),
    env_prefix: "SERVICE_A",
    default_port: 8080,
    about: "The echo daemon",
};

testkit::daemon_contract_tests!(SERVICE_A);
