import Foundation
import KMSAudit
public import KMSCore
import KMSRotation
import KMSServer
import KMSService
import KMSTransit
import KMSKMIP
import Logging

/// SIGHUP: build and check every part of the new configuration, then swap them in.
extension Daemon {
    /// SIGHUP: reads the configuration file again and applies what can change without a restart — the server
    /// certificate, the client CA, the CRL, per-key allow lists, admin identities and tokens, limits, the transit
    /// section (its keys and tokens), the kmip section. Providers and
    /// listeners stay as they are. A bad file changes nothing and is reported.
    public func reload(_ running: Running, providers: [String: any KeyProvider]) throws {
        do {
            try reloadUnaudited(running, providers: providers)
            running.server.audit?.submit(AuditEvent(.admin, "reload", result: .ok, identity: "SIGHUP", detail: configuration.source))
        } catch {
            running.server.audit?.submit(AuditEvent(.admin, "reload", result: .failed, identity: "SIGHUP", detail: "\(error)".prefix(300).description))
            throw error
        }
    }

    private func reloadUnaudited(_ running: Running, providers: [String: any KeyProvider]) throws {
        let fresh = try Configuration.load(path: configuration.source)
        try checkReplacement(by: fresh)
        let reloaded = Daemon(fresh, logger: logger)
        // Build and check every part first; swap only when all of them are ready, so a failure changes nothing.
        if reloaded.stateLocation != stateLocation {
            throw ConfigurationError(["state: a reload cannot move the state store (\(stateLocation)); restart kmsd to change it"])
        }
        if running.tls != nil, fresh.tls == nil {
            throw ConfigurationError(["tls: a reload cannot turn TLS off on a running listener; restart kmsd to change it"])
        }
        // The transit section reloads (keys, tokens); the listener stays where it is (the parser keeps `listen.transit`
        // and the section together, so the address says whether there is one).
        let (before, after) = (configuration.listen.transit, fresh.listen.transit)
        if before?.host != after?.host || before?.port != after?.port {
            throw ConfigurationError(["listen.transit: a reload cannot start, stop or move the transit listener; restart kmsd to change it"])
        }
        let (kmipBefore, kmipAfter) = (configuration.listen.kmip, fresh.listen.kmip)
        if kmipBefore?.host != kmipAfter?.host || kmipBefore?.port != kmipAfter?.port {
            throw ConfigurationError(["listen.kmip: a reload cannot start, stop or move the KMIP listener; restart kmsd to change it"])
        }
        if configuration.kmip?.wrappingKey != fresh.kmip?.wrappingKey {
            throw ConfigurationError(["kmip.wrapping_key: a reload cannot change the key that seals managed objects; restart kmsd to "
                                      + "change it, and keep the old key configured (objects sealed by it keep opening with it)"])
        }
        let tls = try fresh.tls.map { try Self.tlsConfiguration($0, adminCA: fresh.admin.clientCA) }
        let context = try tls.map { try TLSContextBox.makeContext($0) }
        let transitContext = try running.transitTLS == nil ? nil : tls.map { try TLSContextBox.makeContext(Self.transitTLS($0)) }
        let kmipContext = try running.kmip == nil ? nil : tls.map { try TLSContextBox.makeContext(Self.kmipTLS($0)) }
        let revocation = try Self.revocation(fresh.tls)
        try running.server.checkNotRollback(revocation)
        let pins = try reloaded.providerPINs(providers)
        let keys = reloaded.rotationKeys(providers)
        let snapshot = KMSServer.Snapshot(policy: try reloaded.policy(providers, rotation: running.server.rotation), revocation: revocation,
                                          revocationGrace: fresh.tls?.crlGrace ?? .seconds(3600))

        if let context, let box = running.tls { box.install(context) }
        if let transitContext, let box = running.transitTLS { box.install(transitContext) }
        if let kmipContext, let listener = running.kmip { listener.tls.install(kmipContext) }
        running.server.rotation.update(keys: keys)
        running.server.reload(snapshot)
        // After the policy the transit keys name: a transit name never points at a key the policy does not have yet.
        if let transit = fresh.transit { running.transit?.reload(transit) }
        if let kmip = fresh.kmip { running.kmip?.frontEnd.reload(kmip) }
        running.revocationRefresh.update(fresh.tls)
        for (provider, pin) in pins { provider.reloadCredential(pin) }
        logger.notice("configuration reloaded", metadata: ["file": "\(configuration.source)"])
    }
}
