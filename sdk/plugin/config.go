package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// DecodeConfig fills the JSON-tagged fields of impl (a pointer to a struct) from a
// plugin_config JSON object and then calls impl's Validate method, if it has one.
//
// Unlike encoding/json it does not stop at the first problem: every unknown key, every
// value of the wrong type and every validation failure is reported, joined with
// errors.Join, each wrapping provider.ErrInvalidConfig and naming its key. On error impl
// may be partly filled; the caller must not use it.
func DecodeConfig(data []byte, impl any) error {
	var errs []error
	if len(bytes.TrimSpace(data)) > 0 && !bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		errs = decodeFields(data, impl)
	}
	if len(errs) == 0 {
		if v, ok := impl.(provider.Validator); ok {
			if err := v.Validate(); err != nil {
				for _, e := range flatten(err) {
					errs = append(errs, invalid(e))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// invalid makes err an ErrInvalidConfig without changing its message.
func invalid(err error) error {
	if errors.Is(err, provider.ErrInvalidConfig) {
		return err
	}
	return configError{err}
}

// configError is one configuration problem. It is an ErrInvalidConfig through Is, not
// through a multi-error Unwrap: the wire codec splits errors.Join trees (anything with
// Unwrap() []error) into separate problems, which would report each problem twice, once
// without its kind and once as a bare "invalid configuration".
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

func (e configError) Is(target error) bool { return target == provider.ErrInvalidConfig }

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// field is one configurable struct field, found through embedded structs too.
type field struct {
	name  string
	value reflect.Value
}

func configFields(v reflect.Value) []field {
	var out []field
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if sf.Anonymous && name == "" {
			// Embedded structs promote their fields, as in encoding/json; so do embedded
			// struct pointers that are set. An embedded interface or nil pointer (a
			// wrapped implementation, a client) is no configuration.
			switch f := v.Field(i); {
			case sf.Type.Kind() == reflect.Struct:
				out = append(out, configFields(f)...)
				continue
			case sf.Type.Kind() == reflect.Pointer && sf.Type.Elem().Kind() == reflect.Struct:
				if !f.IsNil() {
					out = append(out, configFields(f.Elem())...)
				}
				continue
			case sf.Type.Kind() == reflect.Interface:
				continue
			}
		}
		if name == "" {
			name = sf.Name
		}
		out = append(out, field{name: name, value: v.Field(i)})
	}
	return out
}

func decodeFields(data []byte, impl any) []error {
	rv := reflect.ValueOf(impl)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return []error{invalid(fmt.Errorf("plugin_config: the plugin's configuration type %T is not a pointer to a struct", impl))}
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return []error{invalid(fmt.Errorf("plugin_config: not a JSON object: %v", err))}
	}
	fields := configFields(rv.Elem())
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	var errs []error
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		i := slices.IndexFunc(fields, func(f field) bool { return f.name == key })
		if i < 0 {
			i = slices.IndexFunc(fields, func(f field) bool { return strings.EqualFold(f.name, key) })
		}
		if i < 0 {
			errs = append(errs, invalid(fmt.Errorf("plugin_config.%s: unknown key%s (known keys: %s)",
				key, suggest(key, names), strings.Join(names, ", "))))
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(raw[key]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(fields[i].value.Addr().Interface()); err != nil {
			errs = append(errs, invalid(fmt.Errorf("plugin_config.%s: %s", key, describeJSONError(err))))
		}
	}
	return errs
}

func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("expected %s, got a JSON %s", te.Type, te.Value)
	}
	return err.Error()
}

// suggest returns ` (did you mean "x"?)` for the closest known key within two edits.
func suggest(key string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(key), strings.ToLower(k)); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
