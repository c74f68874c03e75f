import Crypto
import Foundation
import KMSCore

/// Verifies audit files offline: the chain (`seq` consecutive, each `prev` the SHA-256 of the line before), the
/// checkpoint signatures, and that the log ends with a closing checkpoint (otherwise records after the last
/// checkpoint could have been cut off unseen).
public struct AuditVerifier {
    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        public let file: String
        public let line: Int
        /// The record named (its `seq` where it has one).
        public let seq: UInt64?
        public let message: String
        public var description: String { "\(file):\(line)" + (seq.map { " (record seq \($0))" } ?? "") + ": \(message)" }
    }

    public struct Report: Sendable {
        public var records = 0
        public var checkpoints = 0
        public var firstSeq: UInt64?
        public var lastSeq: UInt64?
        /// Records after the last checkpoint (not yet covered by a signature).
        public var unsignedTail = 0
        /// Checkpoints in the v1 format (signing only seq and prev), written by kmsd before checkpoint v2.
        public var v1Checkpoints = 0
        /// False when no public key was given: the chain was checked, the signatures were not.
        public var signaturesChecked = false
        public var problem: Problem?
        public var notes: [String] = []
        /// The replica whose chain this is (its records' `replica`); nil for a log without one.
        public var replica: String?
        /// Each checkpoint's line hash by seq, for the anchors in the state store (`AuditAnchorCheck`).
        public var checkpointHashes: [UInt64: String] = [:]
        public var ok: Bool { problem == nil }
    }

    let publicKey: P256.Signing.PublicKey?
    let publicKeyID: String?
    let allowOpenTail: Bool
    let expectedLastSeq: UInt64?

    /// - Parameters:
    ///   - publicKeyPEM: the key checkpoints must be signed with; without one, signatures are not checked (and the
    ///     report says so).
    ///   - allowOpenTail: accept a log that does not end with a closing checkpoint (a live log kmsd is still writing).
    ///   - expectedLastSeq: the `seq` the log must end at (an operator's pin of the end, from a copy kept elsewhere).
    public init(publicKeyPEM: String?, allowOpenTail: Bool = false, expectedLastSeq: UInt64? = nil) throws {
        if let publicKeyPEM {
            do {
                publicKey = try P256.Signing.PublicKey(pemRepresentation: publicKeyPEM)
            } catch {
                throw AuditError("the public key is not a PEM P-256 public key")
            }
            publicKeyID = AuditKeys.keyID(publicKeyPEM: publicKeyPEM)
        } else {
            publicKey = nil
            publicKeyID = nil
        }
        self.allowOpenTail = allowOpenTail
        self.expectedLastSeq = expectedLastSeq
    }

    private struct Line {
        let file: String
        let number: Int
        let bytes: ArraySlice<UInt8>
        /// The parsed record (nil when the line is not JSON), its `seq` and `prev`.
        let object: [String: Any]?
        var seq: UInt64? { (object?["seq"] as? NSNumber)?.uint64Value }
        var prev: String? { object?["prev"] as? String }

        init(file: String, number: Int, bytes: ArraySlice<UInt8>) {
            self.file = file
            self.number = number
            self.bytes = bytes
            object = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any]
        }
    }

    /// Verifies `files` as one chain, oldest first.
    public func verify(files: [String]) -> Report {
        var report = Report()
        var lines: [Line] = []
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else {
                report.problem = Problem(file: file, line: 0, seq: nil, message: "cannot be read")
                return report
            }
            let bytes = [UInt8](data)
            if !bytes.isEmpty && bytes.last != UInt8(ascii: "\n") {
                report.problem = Problem(file: file, line: bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).count,
                                         seq: nil, message: "the last line is incomplete (the file was cut in the middle of a record)")
                return report
            }
            for (index, line) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast().enumerated() {
                lines.append(Line(file: file, number: index + 1, bytes: line))
            }
        }
        if publicKey == nil { report.notes.append("no public key given: checkpoint signatures were not checked") }
        report.signaturesChecked = publicKey != nil
        var seenV2 = false

        // Every line's seq up front (each line is parsed once, above), to tell a reordering from a deletion.
        let sequence = lines.map(\.seq)
        var previousHash: String?
        var previousSeq: UInt64?
        var lastWasClosing = false
        for (index, line) in lines.enumerated() {
            func fail(_ message: String, seq: UInt64?) -> Report {
                var failed = report
                failed.problem = Problem(file: line.file, line: line.number, seq: seq, message: message)
                return failed
            }
            guard let object = line.object, let seq = line.seq, let prev = line.prev else {
                return fail("not an audit record (malformed JSON, or no seq/prev)", seq: nil)
            }
            let hash = Hex.encode(SHA256.hash(data: line.bytes))
            let replica = object["replica"] as? String
            if index == 0 {
                report.replica = replica
            } else if replica != report.replica {
                return fail("a record of \(replica.map { "replica '\($0)'" } ?? "no replica") in the chain of "
                            + "\(report.replica.map { "replica '\($0)'" } ?? "no replica"): two logs mixed", seq: seq)
            }
            if let previousSeq {
                if seq <= previousSeq {
                    let earlier = sequence[..<index].contains(seq)
                    return fail(earlier ? "repeats seq \(seq): a record was inserted"
                                        : "comes after record seq \(previousSeq): records were reordered", seq: seq)
                }
                if seq > previousSeq + 1 {
                    if let later = sequence[(index + 1)...].firstIndex(of: previousSeq + 1) {
                        return fail("stands where seq \(previousSeq + 1) should (that record is at \(lines[later].file):\(lines[later].number)): "
                                    + "records were reordered", seq: seq)
                    }
                    let missing = seq - previousSeq == 2 ? "\(previousSeq + 1)" : "\(previousSeq + 1)–\(seq - 1)"
                    return fail("record(s) seq \(missing) are missing before it: deleted", seq: seq)
                }
                if prev != previousHash {
                    // Which side changed? If this line is intact (the next one chains to it), the one before it was.
                    let nextChainsHere = index + 1 < lines.count && lines[index + 1].prev == hash
                    if nextChainsHere {
                        let before = lines[index - 1]
                        var failed = report
                        failed.problem = Problem(file: before.file, line: before.number, seq: previousSeq,
                                                 message: "was modified: its hash no longer matches the prev recorded by seq \(seq)")
                        return failed
                    }
                    return fail("does not chain to record seq \(previousSeq) (prev mismatch): modified or inserted", seq: seq)
                }
            } else if prev != AuditChain.genesis {
                report.notes.append("the chain starts at seq \(seq), not at the first record ever written (older files not given)")
            }
            report.firstSeq = report.firstSeq ?? seq
            report.lastSeq = seq
            report.records += 1
            report.unsignedTail += 1
            lastWasClosing = false
            if object["type"] as? String == "checkpoint" {
                guard let checkpoint = object["checkpoint"] as? [String: Any], let signatureText = checkpoint["signature"] as? String,
                      let signatureBytes = Data(base64Encoded: signatureText)
                else {
                    return fail("a checkpoint without a signature", seq: seq)
                }
                switch checkpoint["v"] {
                case nil:
                    // kmsd never goes back to v1 once it writes v2: a v1 checkpoint after a v2 one was not written by it.
                    if seenV2 { return fail("a v1 checkpoint after v2 checkpoints (kmsd never writes one): forged", seq: seq) }
                    if let publicKey {
                        let digest = SHA256.hash(data: AuditChain.checkpointMessage(seq: seq, prev: prev))
                        guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: signatureBytes),
                              publicKey.isValidSignature(signature, for: digest)
                        else {
                            return fail("the checkpoint signature is not valid for this public key", seq: seq)
                        }
                    }
                    report.v1Checkpoints += 1
                case let version as NSNumber where version.intValue == 2 && !(version is Bool):
                    seenV2 = true
                    guard let closing = checkpoint["closing"] as? Bool, let records = (checkpoint["records"] as? NSNumber)?.uint64Value,
                          let keyID = checkpoint["key_id"] as? String, let time = object["time"] as? String,
                          let unsigned = AuditChain.unsignedCheckpointLine(line.bytes)
                    else {
                        return fail("a v2 checkpoint without closing, records, key_id or time", seq: seq)
                    }
                    if records != seq { return fail("a checkpoint whose records (\(records)) is not its seq", seq: seq) }
                    if let publicKey, let publicKeyID {
                        if keyID != publicKeyID {
                            return fail("the checkpoint signature is by key \(keyID), not by the given public key (\(publicKeyID))", seq: seq)
                        }
                        let message = AuditChain.checkpointMessageV2(
                            seq: seq, prev: prev, unsignedLineHash: Hex.encode(SHA256.hash(data: unsigned)), closing: closing,
                            records: records, keyID: keyID, time: time)
                        guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: signatureBytes),
                              publicKey.isValidSignature(signature, for: SHA256.hash(data: message))
                        else {
                            return fail("the checkpoint signature is not valid for this public key (or the checkpoint was modified)", seq: seq)
                        }
                    }
                default:
                    return fail("a checkpoint of an unknown format version", seq: seq)
                }
                report.checkpoints += 1
                report.checkpointHashes[seq] = hash
                report.unsignedTail = 0
                lastWasClosing = checkpoint["closing"] as? Bool == true
            }
            previousSeq = seq
            previousHash = hash
        }
        if report.v1Checkpoints > 0 {
            report.notes.append("\(report.v1Checkpoints) checkpoint(s) are v1 (written before checkpoint v2): their signatures cover "
                                + "seq and prev only, not closing")
        }
        if let expectedLastSeq, report.lastSeq != expectedLastSeq {
            let lastSeq = report.lastSeq.map(String.init) ?? "none"
            report.problem = Problem(file: lines.last?.file ?? files.last ?? "", line: lines.last?.number ?? 0, seq: report.lastSeq,
                                     message: "the log ends at seq \(lastSeq), not at the expected seq \(expectedLastSeq)"
                                        + ((report.lastSeq ?? 0) < expectedLastSeq ? ": records were cut off" : ""))
            return report
        }
        if let last = lines.last, !lastWasClosing {
            let message = "the log ends without a closing checkpoint: \(report.unsignedTail) record(s) after the last checkpoint are "
                + "not covered by a signature, and records after them may have been cut off"
            if allowOpenTail {
                report.notes.append(message)
            } else {
                report.problem = Problem(file: last.file, line: last.number, seq: report.lastSeq, message: message)
            }
        }
        return report
    }

}
