import Foundation
import KMSCore
@testable import KMSDaemon
import KMSTransit
import Testing

/// `listen.transit` and `transit:`: parsed into the front end's settings, every mistake named with its key path, and
/// configured tokens flagged by the production checklist.
@Suite("Transit configuration")
struct TransitConfigurationTests {
    let configurations = ConfigurationTests()

    static let transit = """
        transit:
          mount: vault/transit
          keys:
            orders: orders
            tenants: { key: orders, derived: true }
          tokens:
            - { sha256: "\(String(repeating: "ab", count: 32))", identity: "uri:spiffe://prod/storage/db-1", ttl: 24h, renewable: true, max_ttl: 72h, policies: [root] }
          login_ttl: 10m
          max_login_tokens: 50
        """

    func yaml(_ transit: String, listen: String = ", transit: \"10.0.0.5:8200\"") -> String {
        ConfigurationTests.safe.replacingOccurrences(of: "api: \"10.0.0.5:8443\"", with: "api: \"10.0.0.5:8443\"\(listen)") + "\n" + transit
    }

    @Test func aTransitSectionIsParsed() throws {
        let configuration = try configurations.parse(yaml(Self.transit), in: try ConfigurationTests.files())
        let transit = try #require(configuration.transit)
        #expect(configuration.listen.transit?.host == "10.0.0.5" && configuration.listen.transit?.port == 8200)
        #expect(transit.mount == "vault/transit")
        #expect(transit.keys["orders"] == .init(key: try KeyName("orders")))
        #expect(transit.keys["tenants"] == .init(key: try KeyName("orders"), derived: true))
        let token = try #require(transit.tokens.first)
        #expect(token.hash == Array(repeating: 0xab, count: 32))
        #expect(token.identity == "uri:spiffe://prod/storage/db-1")
        #expect(token.ttl == .seconds(86400) && token.maxTTL == .seconds(3 * 86400) && token.renewable)
        #expect(token.policies == ["root"])
        #expect(transit.loginTTL == .seconds(600) && transit.maxLoginTokens == 50)
        // Production passes, with the configured token shown as a warning.
        let checklist = HardeningChecklist(configuration)
        #expect(checklist.violations.isEmpty, "\(checklist.table)")
        let item = try #require(checklist.items.first { $0.title == "transit clients authenticate with certificates" })
        #expect(item.warning)
        #expect(item.detail.contains("1 static token"))
    }

    @Test func everyTransitMistakeIsNamedWithItsKeyPath() throws {
        let bad = """
            transit:
              mount: sys/x
              keys:
                "bad name!": orders
                ghost: nowhere
                half: { derived: true }
              tokens:
                - { sha256: "not-hex", identity: "uri:spiffe://prod/x" }
                - { sha256: "\(String(repeating: "cd", count: 32))", identity: "spiffe-without-kind" }
                - { sha256: "\(String(repeating: "ef", count: 32))", identity: "uri:spiffe://prod/*" }
                - { sha256: "\(String(repeating: "01", count: 32))", identity: "cn:x", renewable: true }
              login_ttl: forever
              colour: blue
            """
        do {
            _ = try configurations.parse(yaml(bad), in: try ConfigurationTests.files())
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            let text = error.problems.joined(separator: "\n")
            for expected in ["transit.mount:", "transit.keys.bad name!:", "transit.keys.ghost:", "transit.keys.half.key:",
                             "transit.tokens[0].sha256:", "transit.tokens[1].identity:", "transit.tokens[2].identity:",
                             "transit.tokens[3].renewable:", "transit.login_ttl:", "transit.colour: unknown key"] {
                #expect(text.contains(expected), "missing \(expected) in:\n\(text)")
            }
        }
    }

    @Test func theListenerAndTheSectionComeTogether() throws {
        let directory = try ConfigurationTests.files()
        let withoutListener = #expect(throws: ConfigurationError.self) { try configurations.parse(yaml(Self.transit, listen: ""), in: directory) }
        #expect(withoutListener?.problems.contains { $0.hasPrefix("listen.transit:") } == true)
        let withoutSection = #expect(throws: ConfigurationError.self) { try configurations.parse(yaml(""), in: directory) }
        #expect(withoutSection?.problems.contains { $0.hasPrefix("transit:") && $0.contains("listen.transit is set") } == true)
        // A wildcard bind needs allow_public_bind in production, as the API's does.
        let wildcard = try configurations.parse(yaml(Self.transit, listen: ", transit: \"0.0.0.0:8200\""), in: directory)
        #expect(HardeningChecklist(wildcard).violations.map(\.title) == ["transit listener: no wildcard bind (or allow_public_bind set)"])
    }
}
