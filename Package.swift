// swift-tools-version: 6.2
//
// Talus in Swift: runs tools (mostly fuzzers) in throw-away VMs on a fleet of hypervisor hosts.
// Layout (see DESIGN.md §11): C shims at the bottom, thin Swift wrappers over them, a model
// without I/O, behaviour in libraries, thin executables.

import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "talus",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "talus-master", targets: ["talus-master"]),
        .executable(name: "talus-slave", targets: ["talus-slave"]),
        .executable(name: "talus-api", targets: ["talus-api"]),
        .executable(name: "talus", targets: ["talus"]),
        .executable(name: "talus-agent", targets: ["talus-agent"]),
        .executable(name: "talus-code", targets: ["talus-code"]),
        .executable(name: "talus-bench", targets: ["talus-bench"]),
        .library(name: "Mongo", targets: ["Mongo"]),
        .library(name: "AMQP", targets: ["AMQP"]),
        .library(name: "Libvirt", targets: ["Libvirt"]),
        .library(name: "TalusModel", targets: ["TalusModel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: ["JSON", "YAML"]),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // MARK: C shims (Debian 12 -dev packages; see provisioning/dev/services.sh install)
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        .systemLibrary(name: "CRabbitMQ", pkgConfig: "librabbitmq", providers: [.apt(["librabbitmq-dev"])]),
        .systemLibrary(name: "CMongoC", pkgConfig: "libmongoc-1.0", providers: [.apt(["libmongoc-dev", "libbson-dev"])]),

        // MARK: Swift wrappers over the C libraries
        .target(name: "BSON", swiftSettings: swiftSettings),
        .target(
            name: "Mongo",
            dependencies: [
                "CMongoC", "BSON",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AMQP",
            dependencies: ["CRabbitMQ", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Libvirt",
            dependencies: [
                "CLibvirt",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: The model: documents, states, transitions, messages. No I/O.
        .target(name: "TalusModel", dependencies: ["BSON"], swiftSettings: swiftSettings),

        // MARK: Behaviour
        .target(
            name: "TalusCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TalusMaster",
            dependencies: [
                "TalusCore", "TalusModel", "Mongo", "AMQP", "Libvirt",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TalusCode",
            dependencies: [
                "TalusCore", "TalusModel", "Mongo", "TalusAgent",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TalusAPI",
            dependencies: [
                "TalusCore", "TalusModel", "TalusCode", "Mongo",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "_NIOFileSystem", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TalusSlave",
            dependencies: [
                "TalusCore", "TalusModel", "BSON", "AMQP", "Libvirt",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TalusCLI",
            dependencies: [
                "TalusModel", "TalusCode", "TalusCore", "BSON",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_NIOFileSystem", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The guest agent is linked statically into the guest (images/, DESIGN §7): it may depend
        // only on pure-Swift targets and FoundationEssentials.
        .target(name: "TalusAgent", dependencies: ["TalusModel"], swiftSettings: swiftSettings),

        // MARK: Thin executables
        .executableTarget(
            name: "talus-master",
            dependencies: ["TalusMaster", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "talus-slave",
            dependencies: ["TalusSlave", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "talus-api", dependencies: ["TalusAPI"], swiftSettings: swiftSettings),
        .executableTarget(name: "talus", dependencies: ["TalusCLI"], swiftSettings: swiftSettings),
        .executableTarget(name: "talus-agent", dependencies: ["TalusAgent"], swiftSettings: swiftSettings),
        // The code repository's hooks and administration (`talus-code init|hook|record|...`).
        .executableTarget(
            name: "talus-code",
            dependencies: [
                "TalusCode", "TalusCore", "Mongo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "talus-bench",
            dependencies: [
                "Mongo", "AMQP", "Libvirt", "TalusModel", "TalusCore", "TalusMaster", "TalusSlave", "TalusAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            path: "Benchmarks/talus-bench",
            swiftSettings: swiftSettings
        ),

        // MARK: Tests (real services; see provisioning/dev/test.sh)
        .target(
            name: "TalusTestSupport",
            dependencies: ["BSON", .product(name: "Logging", package: "swift-log")],
            path: "Tests/TalusTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "BSONTests", dependencies: ["BSON"], swiftSettings: swiftSettings),
        .testTarget(name: "MongoTests", dependencies: ["Mongo", "TalusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "AMQPTests", dependencies: ["AMQP", "TalusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "LibvirtTests", dependencies: ["Libvirt", "TalusCore", "TalusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TalusModelTests", dependencies: ["TalusModel"], swiftSettings: swiftSettings),
        .testTarget(name: "TalusCoreTests", dependencies: ["TalusCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "TalusMasterTests",
            dependencies: ["TalusMaster", "TalusModel", "TalusCore", "Mongo", "AMQP", "TalusTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "TalusAgentTests", dependencies: ["TalusAgent", "TalusTestSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "TalusMasterImagesTests",
            dependencies: [
                "TalusMaster", "TalusCore", "TalusModel", "Mongo", "Libvirt", "TalusTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The API served in-process on a loopback port against the shared SecantusDB, for the
        // API and CLI tests.
        .target(
            name: "TalusAPITestSupport",
            dependencies: [
                "TalusAPI", "TalusTestSupport", "Mongo", "TalusModel", "TalusCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/TalusAPITestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TalusAPITests",
            dependencies: [
                "TalusAPI", "TalusAPITestSupport", "TalusTestSupport", "Mongo", "TalusModel", "TalusCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TalusCLITests",
            dependencies: [
                "TalusCLI", "TalusAPI", "TalusAPITestSupport", "TalusTestSupport", "Mongo", "TalusModel", "TalusCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TalusCodeTests",
            dependencies: [
                "TalusCode", "TalusAgent", "TalusModel", "TalusCore", "TalusAPI", "Mongo", "BSON", "TalusTestSupport",
                "TalusAPITestSupport",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TalusSlaveTests",
            dependencies: ["TalusSlave", "TalusTestSupport", "TalusAPITestSupport", "AMQP", "Libvirt", "TalusModel", "TalusCore"],
            swiftSettings: swiftSettings
        ),
        // Units, provisioning, configuration reference, notify protocol and metrics of the built
        // daemons: runs the executables and scripts, links none of the daemons' code.
        .testTarget(name: "OpsTests", dependencies: ["TalusTestSupport"], swiftSettings: swiftSettings),
        // The whole system end to end: the built daemons, talus-code and the CLI as processes
        // against the shared services and real QEMU guests (issue 7, item 4).
        .testTarget(
            name: "TalusEndToEndTests",
            dependencies: ["TalusTestSupport", "TalusModel", "TalusCore", "Mongo", "BSON", "Libvirt"],
            swiftSettings: swiftSettings
        ),
    ]
)
