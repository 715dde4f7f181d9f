package trustsds

import (
	"crypto/x509"
	"maps"
	"slices"
	"sync"
)

// store owns the subscription and the trust per name. The stream goroutine writes it;
// handshakes, WaitReady and Subscribe/Unsubscribe read or change it from any goroutine.
type store struct {
	mu     sync.RWMutex
	wanted map[string]struct{}
	held   map[string]*trust
	pools  *pools
	// changed is closed (and replaced) on every change of wanted or held: WaitReady sleeps
	// on it instead of polling.
	changed chan struct{}
	// resubscribe wakes the stream goroutine when the subscription changed (capacity 1:
	// many changes collapse into one wake-up, the stream then reads the whole set).
	resubscribe chan struct{}
}

func newStore(base *x509.CertPool, names []string) *store {
	s := &store{
		wanted:      make(map[string]struct{}),
		held:        make(map[string]*trust),
		pools:       newPools(base),
		changed:     make(chan struct{}),
		resubscribe: make(chan struct{}, 1),
	}
	for _, n := range names {
		s.wanted[n] = struct{}{}
	}
	return s
}

// notifyLocked wakes readiness waiters; callers hold mu for writing.
func (s *store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *store) wakeStream() {
	select {
	case s.resubscribe <- struct{}{}:
	default:
	}
}

func (s *store) subscribe(names []string) {
	s.mu.Lock()
	added := false
	for _, n := range names {
		if _, ok := s.wanted[n]; !ok {
			s.wanted[n] = struct{}{}
			added = true
		}
	}
	if added {
		s.notifyLocked()
	}
	s.mu.Unlock()
	if added {
		s.wakeStream()
	}
}

// unsubscribe forgets names and drops their trust at once: a tls.Config bound to a name
// nobody subscribes to any more fails closed, like a withdrawn one.
func (s *store) unsubscribe(names []string) {
	s.mu.Lock()
	removed := false
	for _, n := range names {
		if _, ok := s.wanted[n]; ok {
			delete(s.wanted, n)
			s.dropLocked(n)
			removed = true
		}
	}
	if removed {
		s.notifyLocked()
	}
	s.mu.Unlock()
	if removed {
		s.wakeStream()
	}
}

// subscription is the wanted names (sorted) and the versions held for them, for the first
// request of a stream.
func (s *store) subscription() ([]string, map[string]string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	versions := make(map[string]string, len(s.held))
	for n, t := range s.held {
		versions[n] = t.version
	}
	return slices.Sorted(maps.Keys(s.wanted)), versions
}

func (s *store) names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Sorted(maps.Keys(s.wanted))
}

func (s *store) isWanted(name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.wanted[name]
	return ok
}

func (s *store) get(name string) *trust {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.held[name]
}

// install makes a validated bundle the trust for name. It reports whether anything
// changed: the same bytes again (a SotW response for another name, a resend) are no news.
// A name unsubscribed meanwhile is not installed.
func (s *store) install(name, version string, pem []byte, certs []*x509.Certificate) bool {
	digest := digestOf(pem)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.wanted[name]; !ok {
		return false
	}
	old := s.held[name]
	if old != nil && old.digest == digest {
		return false
	}
	t := &trust{
		version: version,
		digest:  digest,
		pem:     pem,
		certs:   certs,
		pool:    s.pools.acquire(digest, certs),
	}
	if old != nil {
		s.pools.release(old.digest)
	}
	s.held[name] = t
	s.notifyLocked()
	return true
}

// withdraw drops the trust for name and returns the version it had ("" if none).
func (s *store) withdraw(name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.held[name]
	if t == nil {
		return "", false
	}
	s.dropLocked(name)
	s.notifyLocked()
	return t.version, true
}

func (s *store) dropLocked(name string) {
	if t := s.held[name]; t != nil {
		s.pools.release(t.digest)
		delete(s.held, name)
	}
}

// readiness reports the wanted names without trust, and a channel closed on the next
// change.
func (s *store) readiness() ([]string, <-chan struct{}) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var missing []string
	for n := range s.wanted {
		if _, ok := s.held[n]; !ok {
			missing = append(missing, n)
		}
	}
	slices.Sort(missing)
	return missing, s.changed
}

// poolCount is the number of distinct pools alive, for tests of the no-leak promise.
func (s *store) poolCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.pools.entries)
}
