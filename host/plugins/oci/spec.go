package oci

import (
	"time"

	specs "github.com/opencontainers/image-spec/specs-go"
)

var zeroTime = time.Unix(0, 0).UTC()

func specsVersioned() specs.Versioned { return specs.Versioned{SchemaVersion: 2} }
