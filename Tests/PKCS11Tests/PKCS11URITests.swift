import PKCS11
import Testing

@Suite("PKCS#11 URI (RFC 7512)")
struct PKCS11URITests {
    @Test func tokenAndObjectAttributes() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=kms;manufacturer=SoftHSM%20project;serial=0123abcd;model=SoftHSM%20v2;object=kmsd;type=secret-key")
        #expect(uri.token == "kms")
        #expect(uri.manufacturer == "SoftHSM project")
        #expect(uri.serial == "0123abcd")
        #expect(uri.model == "SoftHSM v2")
        #expect(uri.object == "kmsd")
        #expect(uri.type == "secret-key")
    }

    @Test func percentEncodingInValuesAndBinaryIDs() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=My%20Token%3B%3F;id=%01%02%ff%FE;object=caf%C3%A9")
        #expect(uri.token == "My Token;?")
        #expect(uri.id == [0x01, 0x02, 0xFF, 0xFE])
        #expect(uri.object == "café")
        // Printing re-encodes, and parsing the printed form gives the same URI.
        #expect(try PKCS11URI(parsing: uri.description) == uri)
    }

    @Test func slotAndLibraryAttributes() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:slot-id=17;slot-description=Slot%201;slot-manufacturer=ACME;library-manufacturer=OpenSC;library-description=x;library-version=2.6")
        #expect(uri.slotID == 17)
        #expect(uri.slotDescription == "Slot 1")
        #expect(uri.slotManufacturer == "ACME")
        #expect(uri.libraryManufacturer == "OpenSC")
        #expect(uri.libraryVersion == "2.6")
    }

    @Test func queryAttributes() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=kms?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin&x-vendor=1")
        #expect(uri.modulePath == "/usr/lib/softhsm/libsofthsm2.so")
        #expect(uri.pinSource == "file:/run/secrets/pin")
        #expect(uri.vendorQueryAttributes.map(\.name) == ["x-vendor"] && uri.vendorAttributes.isEmpty)
    }

    /// Found by ci/fuzz: a vendor attribute in both sections was printed twice in the path, so the printed URI no
    /// longer parsed.
    @Test func vendorAttributesStayInTheirSectionWhenPrinted() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:id=%00;x-vendor=%23?x-vendor=1")
        #expect(uri.description == "pkcs11:id=%00;x-vendor=%23?x-vendor=1")
        #expect(try PKCS11URI(parsing: uri.description) == uri)
    }

    @Test func emptyAndSchemeCase() throws {
        #expect(try PKCS11URI(parsing: "pkcs11:") == PKCS11URI())
        #expect(try PKCS11URI(parsing: "PKCS11:token=a").token == "a")
    }

    @Test func pinValueIsNeverPrinted() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=kms?pin-value=s3cret-1234")
        #expect(uri.pinValue == "s3cret-1234")
        #expect(!uri.description.contains("s3cret"))
        #expect(uri.description.contains("pin-value=<redacted>"))
    }

    @Test(arguments: [
        ("token=kms", "starts with"),
        ("pkcs12:token=kms", "starts with"),
        ("pkcs11:token=kms;token=other", "appears twice"),
        ("pkcs11:tokn=kms", "unknown path attribute"),
        ("pkcs11:token=kms?pin=1", "unknown query attribute"),
        ("pkcs11:token", "no \"=\""),
        ("pkcs11:=kms", "name \"\" is not valid"),
        ("pkcs11:token=a%4", "malformed percent-escape"),
        ("pkcs11:token=a%zz", "malformed percent-escape"),
        ("pkcs11:token=a b", "must be percent-encoded"),
        ("pkcs11:slot-id=abc", "not a decimal number"),
        ("pkcs11:slot-id=-1", "not a decimal number"),
        ("pkcs11:type=secret", "is not one of"),
        ("pkcs11:library-version=2.x", "is not M or M.N"),
        ("pkcs11:token=%ff%fe", "not valid UTF-8"),
        ("pkcs11:token=" + String(repeating: "a", count: 33), "at most 32"),
        ("pkcs11:token=kms?module-path=relative.so", "absolute path"),
        ("pkcs11:token=kms?pin-source=file:/p&pin-value=1", "cannot both be given"),
    ])
    func invalidURIsSayWhy(_ text: String, _ reason: String) {
        do {
            _ = try PKCS11URI(parsing: text)
            Issue.record("\(text) parsed")
        } catch let error as PKCS11URIError {
            #expect(error.message.contains(reason), "\(text): \(error.message)")
        } catch {
            Issue.record("\(text): unexpected \(error)")
        }
    }

    @Test func noInputTraps() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("pkcs11:;?&=%0aFz-/ ~é".unicodeScalars)
        for _ in 0..<5_000 {
            let text = String(String.UnicodeScalarView((0..<Int.random(in: 0...40, using: &generator)).map { _ in
                alphabet.randomElement(using: &generator)!
            }))
            for candidate in ["pkcs11:" + text, text] {
                do {
                    let uri = try PKCS11URI(parsing: candidate)
                    // Whatever parses prints as a URI that parses to the same value.
                    #expect(try PKCS11URI(parsing: uri.description) == uri)
                } catch {
                    #expect(error is PKCS11URIError)
                }
            }
        }
    }
}
