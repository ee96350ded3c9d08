package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/sessions"
)

// Secrets are read from files or the environment, never from a flag value
// (flag values show in ps and shell history), and are never printed.
const (
	// minSecretBytes is the shortest signing secret or admin key accepted.
	minSecretBytes = sessions.RecommendedSecretSize
	envSecret      = "AGENTSESSIONS_SECRET"
	envAdminKey    = "AGENTSESSIONS_ADMIN_KEY"
	generateHint   = "generate one with: head -c 32 /dev/urandom | base64 > secret.key && chmod 600 secret.key"
)

// secretOpts are the flags naming the signing secret and the verify-only
// secrets.
type secretOpts struct {
	file     string
	verify   []string // --verify-secret-file
	previous []string // --previous-secret-file, the old name of --verify-secret-file
}

func (o *secretOpts) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.file, "secret-file", "",
		"file holding the HMAC signing secret, >= 32 bytes; its bytes are the secret, minus trailing CR/LF "+
			"(default $"+envSecret+")")
	cmd.Flags().StringArrayVar(&o.verify, "verify-secret-file", nil,
		"file holding a secret accepted when verifying tokens but never used to sign: the next secret, then the "+
			"old one, during a rotation (repeatable; see SECURITY.md)")
	// The old name, kept working; it appends to the same list.
	cmd.Flags().StringArrayVar(&o.previous, "previous-secret-file", nil, "old name of --verify-secret-file")
	_ = cmd.Flags().MarkHidden("previous-secret-file")
}

// loadedSecret is the signing secret and where it came from.
type loadedSecret struct {
	secret   []byte
	verify   [][]byte
	source   string   // "--secret-file PATH", "$AGENTSESSIONS_SECRET", or "" when none was given
	warnings []string // e.g. a secret file readable by others
}

// load reads the secret. With required, a missing secret is a usage error
// saying how to make one. A secret shorter than minSecretBytes is always a
// usage error.
func (o *secretOpts) load(required bool) (loadedSecret, error) {
	var ls loadedSecret
	switch {
	case o.file != "":
		b, warn, err := readSecretFile("--secret-file", o.file)
		if err != nil {
			return ls, err
		}
		ls.secret, ls.source = b, "--secret-file "+o.file
		ls.warnings = append(ls.warnings, warn...)
	case os.Getenv(envSecret) != "":
		ls.secret, ls.source = trimNewline([]byte(os.Getenv(envSecret))), "$"+envSecret
	case required:
		return ls, usageError{errors.New("no signing secret: pass --secret-file PATH or set " + envSecret +
			" (every instance must use the same secret); " + generateHint)}
	}
	if ls.secret != nil && len(ls.secret) < minSecretBytes {
		return ls, usageError{fmt.Errorf("the secret from %s is %d bytes; use at least %d random bytes: %s",
			ls.source, len(ls.secret), minSecretBytes, generateHint)}
	}
	if len(o.previous) > 0 {
		ls.warnings = append(ls.warnings, "--previous-secret-file is the old name of --verify-secret-file; use that")
	}
	for _, path := range append(append([]string(nil), o.verify...), o.previous...) {
		b, warn, err := readSecretFile("--verify-secret-file", path)
		if err != nil {
			return ls, err
		}
		if len(b) < minSecretBytes {
			return ls, usageError{fmt.Errorf("the secret in --verify-secret-file %s is %d bytes; verify-only secrets must be >= %d bytes too",
				path, len(b), minSecretBytes)}
		}
		ls.verify = append(ls.verify, b)
		ls.warnings = append(ls.warnings, warn...)
	}
	return ls, nil
}

// loadAdminKey reads the admin key from file, else $AGENTSESSIONS_ADMIN_KEY.
// It returns nil when neither is set.
func loadAdminKey(file string) (key []byte, warnings []string, err error) {
	source := "$" + envAdminKey
	if file != "" {
		key, warnings, err = readSecretFile("--admin-key-file", file)
		if err != nil {
			return nil, nil, err
		}
		source = "--admin-key-file " + file
	} else if v := os.Getenv(envAdminKey); v != "" {
		key = trimNewline([]byte(v))
	}
	if key != nil && len(key) < minSecretBytes {
		return nil, nil, usageError{fmt.Errorf("the admin key from %s is %d bytes; use at least %d random bytes: "+
			"head -c 32 /dev/urandom | base64", source, len(key), minSecretBytes)}
	}
	return key, warnings, nil
}

// readSecretFile reads a secret file with [sessions.LoadSecretFile], the
// library's one rule (trailing CR/LF dropped), so a service loading the
// same file with the library signs with the same bytes. Its content is
// never part of an error; a file others may read gives a warning.
func readSecretFile(flag, path string) ([]byte, []string, error) {
	b, err := sessions.LoadSecretFile(path)
	var ce *sessions.ConfigError
	switch {
	case errors.As(err, &ce): // empty or oversized
		return nil, nil, usageError{fmt.Errorf("%s: %s %s; %s", flag, ce.Field, ce.Reason, generateHint)}
	case err != nil:
		return nil, nil, usageError{fmt.Errorf("cannot read %s: %s", flag, clean(err))}
	}
	var warnings []string
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		warnings = append(warnings, fmt.Sprintf("%s %s is readable by group or others (mode %04o); chmod 600 it",
			flag, path, fi.Mode().Perm()))
	}
	return b, warnings, nil
}

// trimNewline drops trailing CR/LF, which editors and `echo` add: the
// rule [sessions.LoadSecretFile] applies to files, applied to a secret
// from the environment.
func trimNewline(b []byte) []byte { return bytes.TrimRight(b, "\r\n") }

// randomSecret returns a fresh 32-byte secret for a process that signs
// nothing it hands out, or whose tokens die with it (in-memory serve).
func randomSecret() []byte {
	b := make([]byte, minSecretBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return b
}
