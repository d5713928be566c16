package cloudsim

import (
	"fmt"
	"time"
)

// forever is the expiry of a key authorized with AuthorizeSSHKey: later than any clock
// a test runs on.
var forever = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// AuthorizeSSHKey authorizes publicKey (authorized_keys form) for user on a live VM
// until the VM ends, as a key in GCP instance metadata (`ssh-keys`) is: unlike
// PushSSHKey it does not expire, and the VM need not be running yet.
func (c *Cloud) AuthorizeSSHKey(id, user, publicKey string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	v, ok := c.vms[id]
	if !ok || !v.State.Live() {
		return &Error{Kind: KindNotFound, Message: fmt.Sprintf("instance %s not found", id)}
	}
	k := trimKey(publicKey)
	for _, have := range v.keys {
		if have.user == user && have.key == k && have.expires.Equal(forever) {
			return nil
		}
	}
	v.keys = append(v.keys, pushedKey{user: user, key: k, expires: forever})
	return nil
}
