package trustsds

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// TLSConfig returns a client *tls.Config that verifies servers against the trust in force
// for name at the moment of each handshake: system roots plus the served bundle, or the
// served bundle alone with WithSystemRoots(false). Build it once per upstream and keep it;
// an http.Transport using it needs no rebuild when the bundle rotates, and its existing
// connections are left alone.
//
// serverName is the host name the certificate must be valid for. Leave it empty to check
// the name the connection was made for (http.Transport fills it in from the URL); set it
// for an IP-literal URL, where TLS carries no server name. A handshake with no name to
// check fails: the host-name check is never skipped.
//
// A name without trust (never served, withdrawn, or unsubscribed) fails every handshake.
func (c *Client) TLSConfig(name, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		// The standard verification is replaced, not dropped: VerifyConnection runs the
		// same x509 path validation and host-name check, against the trust current at the
		// time of the handshake rather than a RootCAs pool frozen into the config.
		InsecureSkipVerify: true,
		VerifyConnection:   c.VerifyConnection(name, serverName),
	}
}

// VerifyConnection returns the verification TLSConfig uses, for a tls.Config built
// elsewhere (set InsecureSkipVerify too, or the standard verification with the config's
// RootCAs runs first). It also runs on resumed sessions, so a rotated-out or withdrawn CA
// does not keep admitting a server through a session ticket.
func (c *Client) VerifyConnection(name, serverName string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		return c.verify(name, serverName, cs)
	}
}

func (c *Client) verify(name, serverName string, cs tls.ConnectionState) error {
	t := c.store.get(name)
	if t == nil {
		return fmt.Errorf("trustsds: no trust bundle for %s (not served, or withdrawn)", name)
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("trustsds: the server presented no certificate")
	}
	host := serverName
	if host == "" {
		host = cs.ServerName
	}
	if host == "" {
		return errors.New("trustsds: no server name to verify the certificate for (pass one to TLSConfig for an IP address)")
	}
	intermediates := x509.NewCertPool()
	for _, cert := range cs.PeerCertificates[1:] {
		intermediates.AddCert(cert)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName:       host,
		Roots:         t.pool,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("trustsds: certificate of %s not trusted by bundle %s version %s: %w", host, name, t.version, err)
	}
	return nil
}
