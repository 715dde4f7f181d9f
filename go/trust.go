package trustsds

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// maxBundleBytes is the server's largest bundle (a gateway-wide bundle, 262144 bytes). A
// registration's bundle is that base plus its own CA, so the same cap applies here.
const maxBundleBytes = 262144

// ParseBundle checks PEM data with the server's rules and returns its certificates: only
// CERTIFICATE blocks, at least one, each a parseable X.509 certificate that is not marked
// CA:FALSE (a legacy root without BasicConstraints is accepted, as the server does). The
// error text is the server's `<why>` and never contains the input bytes.
func ParseBundle(data []byte) ([]*x509.Certificate, error) {
	if len(data) > maxBundleBytes {
		return nil, fmt.Errorf("data exceeds the maximum size (%d bytes)", maxBundleBytes)
	}
	var certs []*x509.Certificate
	rest := data
	for {
		start := bytes.Index(rest, []byte("-----BEGIN "))
		if start < 0 {
			break
		}
		rest = rest[start:]
		block, after := pem.Decode(rest)
		// pem.Decode skips a malformed block and returns the next good one; trust must not
		// be built from what is left after a damaged block, so catch the skip.
		consumed := rest[:len(rest)-len(after)]
		if block == nil || bytes.Count(consumed, []byte("-----BEGIN ")) > 1 {
			return nil, errors.New("failed to parse certificate: malformed PEM block")
		}
		if block.Type != "CERTIFICATE" {
			// Only the label is echoed, so a private key pasted by mistake never leaks.
			return nil, fmt.Errorf("unexpected PEM block type %q, expected CERTIFICATE", sanitizeLabel(block.Type))
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("failed to parse certificate: %w", err)
		}
		if cert.BasicConstraintsValid && !cert.IsCA {
			return nil, fmt.Errorf("certificate for %q is not a CA certificate", displayName(cert))
		}
		certs = append(certs, cert)
		rest = after
	}
	if len(certs) == 0 {
		return nil, errors.New("no valid PEM certificate blocks found")
	}
	return certs, nil
}

// displayName is the subject's common name, or the whole subject when it has none.
func displayName(cert *x509.Certificate) string {
	if cert.Subject.CommonName != "" {
		return cert.Subject.CommonName
	}
	return cert.Subject.String()
}

// sanitizeLabel keeps a PEM label printable and short: it ends up in NACKs and logs.
func sanitizeLabel(label string) string {
	var b strings.Builder
	for _, r := range label {
		if b.Len() >= 64 {
			break
		}
		if r == ' ' || r == '_' || ('0' <= r && r <= '9') || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// trust is the verified trust for one name at one version. It is immutable once built, so
// handshakes read it without locks beyond fetching the pointer.
type trust struct {
	version string
	digest  [32]byte
	pem     []byte
	certs   []*x509.Certificate
	pool    *x509.CertPool
}

// pools shares one *x509.CertPool between names that hold the same bundle and forgets it
// when the last of them moves on, so rotations never accumulate pools.
type pools struct {
	base    *x509.CertPool // system roots to start from; nil for served-bundle-only
	entries map[[32]byte]*pooled
}

type pooled struct {
	pool *x509.CertPool
	refs int
}

func newPools(base *x509.CertPool) *pools {
	return &pools{base: base, entries: make(map[[32]byte]*pooled)}
}

// acquire returns the pool for a bundle, building it on first use.
func (p *pools) acquire(digest [32]byte, certs []*x509.Certificate) *x509.CertPool {
	if e, ok := p.entries[digest]; ok {
		e.refs++
		return e.pool
	}
	pool := x509.NewCertPool()
	if p.base != nil {
		pool = p.base.Clone()
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	p.entries[digest] = &pooled{pool: pool, refs: 1}
	return pool
}

func (p *pools) release(digest [32]byte) {
	e, ok := p.entries[digest]
	if !ok {
		return
	}
	if e.refs--; e.refs <= 0 {
		delete(p.entries, digest)
	}
}

func digestOf(pem []byte) [32]byte { return sha256.Sum256(pem) }
