package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"slices"
)

// validateFile checks the page structure of a bbolt file before bbolt maps it.
//
// bbolt trusts its data pages: a page ID out of range is read through the memory map
// without a bounds check (a fault that kills the process, since some of its walks run
// in goroutines of its own), a branch page that points at itself makes a cursor
// descend forever, and a corrupt freelist count makes it allocate terabytes. Only the
// two meta pages carry a checksum. So before the file is handed to bbolt, every page
// bbolt would read is checked here with ordinary bounds-checked reads: the meta page
// bbolt would pick, the freelist, and the whole B+tree including inline buckets. The
// layout is bbolt's on-disk format (version 2), which has not changed since boltdb.
func validateFile(f *os.File, size int64) error {
	v := &validator{f: f, size: size, reachable: map[uint64]bool{}}
	return v.run()
}

// bbolt's on-disk format.
const (
	pageHeaderSize   = 16 // id u64, flags u16, count u16, overflow u32
	elemSize         = 16 // branch: pos u32, ksize u32, pgid u64; leaf: flags u32, pos u32, ksize u32, vsize u32
	bucketHeaderSize = 16 // root pgid u64, sequence u64
	metaSize         = 64 // magic, version, page size, flags u32; root bucket; freelist, pgid, txid, checksum u64
	metaChecksumAt   = 56

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10
	leafBucket   = 0x01

	boltMagic   = 0xED0CDAED
	boltVersion = 2
	noFreelist  = ^uint64(0)

	minPageSize = 1 << 10
	maxPageSize = 1 << 16
	// maxTreeDepth bounds the descent: a tree of 4 KiB pages holding this inventory
	// never gets near it, and a cycle through different pages is caught by reachable.
	maxTreeDepth = 64
)

var ne = binary.NativeEndian // bbolt writes its structures in the host's byte order

type meta struct {
	pageSize uint64
	root     uint64
	freelist uint64
	pgid     uint64 // high-water mark: pages [0, pgid) are in use or free
	txid     uint64
}

// readMeta decodes and checks the meta page at off, as bbolt's Meta.Validate does.
func (v *validator) readMeta(off int64) (meta, error) {
	buf := make([]byte, pageHeaderSize+metaSize)
	if _, err := v.f.ReadAt(buf, off); err != nil {
		return meta{}, fmt.Errorf("read meta page at %d: %w", off, err)
	}
	if flags := ne.Uint16(buf[8:]); flags != flagMeta {
		return meta{}, fmt.Errorf("meta page at %d: page type %#x, want meta", off, flags)
	}
	m := buf[pageHeaderSize:]
	if magic := ne.Uint32(m[0:]); magic != boltMagic {
		return meta{}, fmt.Errorf("meta page at %d: bad magic %#x", off, magic)
	}
	if ver := ne.Uint32(m[4:]); ver != boltVersion {
		return meta{}, fmt.Errorf("meta page at %d: bbolt format version %d, want %d", off, ver, boltVersion)
	}
	h := fnv.New64a()
	h.Write(m[:metaChecksumAt])
	if sum := ne.Uint64(m[metaChecksumAt:]); sum != h.Sum64() {
		return meta{}, fmt.Errorf("meta page at %d: checksum mismatch", off)
	}
	return meta{pageSize: uint64(ne.Uint32(m[8:])), root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]),
		pgid: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}, nil
}

type validator struct {
	f         *os.File
	size      int64
	m         meta
	free      []uint64 // sorted
	reachable map[uint64]bool
}

func (v *validator) run() error {
	if v.size == 0 {
		return errors.New("the file is empty")
	}
	if err := v.pickMeta(); err != nil {
		return err
	}
	m := v.m
	if m.pageSize < minPageSize || m.pageSize > maxPageSize || m.pageSize&(m.pageSize-1) != 0 {
		return fmt.Errorf("meta page: unsupported page size %d", m.pageSize)
	}
	if m.pgid < 3 || m.pgid > uint64(v.size)/m.pageSize {
		return fmt.Errorf("meta page: %d pages in use, but the file holds %d bytes (%d pages): truncated?", m.pgid, v.size, uint64(v.size)/m.pageSize)
	}
	if m.freelist != noFreelist {
		if err := v.readFreelist(m.freelist); err != nil {
			return err
		}
	}
	return v.visit(m.root, 0)
}

// pickMeta chooses the meta page bbolt would use: of the two valid ones, the one with
// the higher transaction ID. It finds the page size the way bbolt does: from the first
// meta page, or else by looking for the second one at each possible page size.
func (v *validator) pickMeta() error {
	m0, err0 := v.readMeta(0)
	ps := m0.pageSize
	if err0 != nil {
		for i := 0; i <= 14; i++ {
			if m, err := v.readMeta(1024 << i); err == nil {
				ps = m.pageSize
				break
			}
		}
	}
	if ps < minPageSize || ps > maxPageSize {
		return fmt.Errorf("no valid meta page: %v", err0)
	}
	m1, err1 := v.readMeta(int64(ps))
	switch {
	case err0 != nil && err1 != nil:
		return fmt.Errorf("both meta pages are invalid: %v; %v", err0, err1)
	case err0 != nil:
		v.m = m1
	case err1 != nil:
		v.m = m0
	case m1.txid > m0.txid:
		v.m = m1
	default:
		v.m = m0
	}
	if v.m.pageSize != ps {
		return fmt.Errorf("meta pages disagree on the page size: %d and %d", ps, v.m.pageSize)
	}
	return nil
}

// page reads page id with its overflow pages and checks its header.
func (v *validator) page(id uint64) (flags uint16, count int, buf []byte, err error) {
	if id < 2 || id >= v.m.pgid {
		return 0, 0, nil, fmt.Errorf("page %d: out of range [2, %d)", id, v.m.pgid)
	}
	hdr := make([]byte, pageHeaderSize)
	if _, err := v.f.ReadAt(hdr, int64(id*v.m.pageSize)); err != nil {
		return 0, 0, nil, fmt.Errorf("page %d: %w", id, err)
	}
	if got := ne.Uint64(hdr); got != id {
		return 0, 0, nil, fmt.Errorf("page %d: header says page %d", id, got)
	}
	overflow := uint64(ne.Uint32(hdr[12:]))
	if overflow >= v.m.pgid-id {
		return 0, 0, nil, fmt.Errorf("page %d: %d overflow pages run past the end (%d pages)", id, overflow, v.m.pgid)
	}
	buf = make([]byte, (overflow+1)*v.m.pageSize)
	if _, err := v.f.ReadAt(buf, int64(id*v.m.pageSize)); err != nil && !errors.Is(err, io.EOF) {
		return 0, 0, nil, fmt.Errorf("page %d: %w", id, err)
	}
	return ne.Uint16(hdr[8:]), int(ne.Uint16(hdr[10:])), buf, nil
}

func (v *validator) readFreelist(id uint64) error {
	flags, count, buf, err := v.page(id)
	if err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	if flags != flagFreelist {
		return fmt.Errorf("freelist: page %d has type %#x", id, flags)
	}
	v.markReachable(id, uint64(len(buf))/v.m.pageSize)
	body := buf[pageHeaderSize:]
	n := uint64(count)
	if count == 0xFFFF { // the real count is the first element
		if len(body) < 8 {
			return fmt.Errorf("freelist: page %d too short for its count", id)
		}
		n, body = ne.Uint64(body), body[8:]
	}
	if n > uint64(len(body))/8 {
		return fmt.Errorf("freelist: page %d claims %d free pages but holds at most %d", id, n, len(body)/8)
	}
	v.free = make([]uint64, n)
	for i := range v.free {
		p := ne.Uint64(body[8*i:])
		if p < 2 || p >= v.m.pgid {
			return fmt.Errorf("freelist: free page %d out of range [2, %d)", p, v.m.pgid)
		}
		v.free[i] = p
	}
	slices.Sort(v.free)
	for i := 1; i < len(v.free); i++ {
		if v.free[i] == v.free[i-1] {
			return fmt.Errorf("freelist: page %d freed twice", v.free[i])
		}
	}
	return nil
}

func (v *validator) markReachable(id, pages uint64) {
	for p := id; p < id+pages; p++ {
		v.reachable[p] = true
	}
}

// visit checks a B+tree page and everything below it.
func (v *validator) visit(id uint64, depth int) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("page %d: tree deeper than %d levels", id, maxTreeDepth)
	}
	flags, count, buf, err := v.page(id)
	if err != nil {
		return err
	}
	pages := uint64(len(buf)) / v.m.pageSize
	for p := id; p < id+pages; p++ {
		if v.reachable[p] {
			return fmt.Errorf("page %d: referenced more than once", p)
		}
		if _, free := slices.BinarySearch(v.free, p); free {
			return fmt.Errorf("page %d: in use and in the freelist", p)
		}
	}
	v.markReachable(id, pages)
	return v.elements(fmt.Sprintf("page %d", id), flags, count, buf, depth)
}

// elements checks the elements of a branch or leaf page held in buf (the page header
// first), following child pages and buckets.
func (v *validator) elements(where string, flags uint16, count int, buf []byte, depth int) error {
	if uint64(pageHeaderSize)+uint64(count)*elemSize > uint64(len(buf)) {
		return fmt.Errorf("%s: %d elements do not fit in %d bytes", where, count, len(buf))
	}
	var prev []byte
	for i := range count {
		off := uint64(pageHeaderSize + i*elemSize)
		e := buf[off : off+elemSize]
		var key, val []byte
		var child uint64
		var elemFlags uint32
		switch flags {
		case flagBranch:
			pos, ksize := uint64(ne.Uint32(e[0:])), uint64(ne.Uint32(e[4:]))
			if off+pos+ksize > uint64(len(buf)) {
				return fmt.Errorf("%s: key %d runs past the page", where, i)
			}
			key, child = buf[off+pos:off+pos+ksize], ne.Uint64(e[8:])
		case flagLeaf:
			elemFlags = ne.Uint32(e[0:])
			pos, ksize, vsize := uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
			if off+pos+ksize+vsize > uint64(len(buf)) {
				return fmt.Errorf("%s: element %d runs past the page", where, i)
			}
			key, val = buf[off+pos:off+pos+ksize], buf[off+pos+ksize:off+pos+ksize+vsize]
		default:
			return fmt.Errorf("%s: page type %#x where a branch or leaf page belongs", where, flags)
		}
		if i > 0 && bytes.Compare(prev, key) >= 0 {
			return fmt.Errorf("%s: keys out of order at element %d", where, i)
		}
		prev = key
		if flags == flagBranch {
			if err := v.visit(child, depth+1); err != nil {
				return err
			}
			continue
		}
		if elemFlags&^leafBucket != 0 {
			return fmt.Errorf("%s: element %d has unknown flags %#x", where, i, elemFlags)
		}
		if elemFlags&leafBucket == 0 {
			continue
		}
		if len(val) < bucketHeaderSize {
			return fmt.Errorf("%s: bucket %q: header truncated", where, key)
		}
		if root := ne.Uint64(val); root != 0 {
			if err := v.visit(root, depth+1); err != nil {
				return fmt.Errorf("bucket %q: %w", key, err)
			}
			continue
		}
		// An inline bucket: its leaf page follows the bucket header in the value.
		inline := val[bucketHeaderSize:]
		if len(inline) < pageHeaderSize {
			return fmt.Errorf("%s: inline bucket %q: page header truncated", where, key)
		}
		if f := ne.Uint16(inline[8:]); f != flagLeaf {
			return fmt.Errorf("%s: inline bucket %q: page type %#x, want leaf", where, key, f)
		}
		if depth+1 > maxTreeDepth {
			return fmt.Errorf("%s: buckets nested deeper than %d levels", where, maxTreeDepth)
		}
		if err := v.elements(fmt.Sprintf("inline bucket %q", key), flagLeaf, int(ne.Uint16(inline[10:])), inline, depth+1); err != nil {
			return err
		}
	}
	if flags == flagBranch && count == 0 {
		return fmt.Errorf("%s: empty branch page", where)
	}
	return nil
}
