//! rust-vmm crates run on our memory unchanged: linux-loader writes a command line, a
//! zero page and an ELF kernel through vm-memory's traits, and virtio-queue pops a
//! descriptor chain whose buffers sit in two different RAM blocks.

use std::io::{Cursor, Read, Write};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{Elf, KernelLoader, load_cmdline};
use ram_block::{Backing, RamBlock, RamBlocks, RamList};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend};

const MIB: u64 = 1 << 20;

/// A small PC-like map: low RAM, a hole, and a second block (as a hot-added DIMM).
fn pc_ram() -> RamList {
    let ram = RamList::new();
    let low = RamBlock::new(
        "pc.ram",
        GuestAddress(0),
        4 * MIB,
        Backing::Anonymous { huge_pages: false },
    );
    ram.add(low.unwrap()).unwrap();
    let dimm = RamBlock::new(
        "dimm0",
        GuestAddress(8 * MIB),
        MIB,
        Backing::Anonymous { huge_pages: false },
    );
    ram.add(dimm.unwrap()).unwrap();
    ram
}

#[test]
fn linux_loader_writes_the_command_line_and_zero_page() {
    let ram = pc_ram();
    let mem = ram.memory();

    let mut cmdline = Cmdline::new(256).unwrap();
    cmdline
        .insert_str("console=ttyS0 reboot=k panic=1")
        .unwrap();
    load_cmdline(&*mem, GuestAddress(0x2_0000), &cmdline).unwrap();
    let mut buf = [0u8; 31];
    mem.read_slice(&mut buf, GuestAddress(0x2_0000)).unwrap();
    assert_eq!(&buf[..30], b"console=ttyS0 reboot=k panic=1");
    assert_eq!(buf[30], 0);
    // A command line that would run into the hole fails: vm-memory writes the part
    // that is RAM and reports the short write; nothing lands outside a block.
    assert!(load_cmdline(&*mem, GuestAddress(4 * MIB - 8), &cmdline).is_err());

    let mut params = linux_loader::bootparam::boot_params::default();
    params.hdr.boot_flag = 0xaa55;
    params.hdr.cmd_line_ptr = 0x2_0000;
    let zero_page = GuestAddress(0x7000);
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, zero_page), &*mem).unwrap();
    let written: linux_loader::bootparam::boot_params = mem.read_obj(zero_page).unwrap();
    assert_eq!({ written.hdr.boot_flag }, 0xaa55);
    assert_eq!({ written.hdr.cmd_line_ptr }, 0x2_0000);
}

/// A minimal x86-64 ELF executable: one PT_LOAD segment of `payload` at `paddr`.
fn elf_image(paddr: u64, payload: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const PAYLOAD_AT: usize = 0x80;
    let mut image = vec![0u8; PAYLOAD_AT];
    image[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LSB, v1
    let mut put = |at: usize, bytes: &[u8]| image[at..at + bytes.len()].copy_from_slice(bytes);
    put(16, &2u16.to_le_bytes()); // e_type: EXEC
    put(18, &62u16.to_le_bytes()); // e_machine: x86-64
    put(20, &1u32.to_le_bytes()); // e_version
    put(24, &paddr.to_le_bytes()); // e_entry
    put(32, &(EHDR as u64).to_le_bytes()); // e_phoff
    put(52, &(EHDR as u16).to_le_bytes()); // e_ehsize
    put(54, &(PHDR as u16).to_le_bytes()); // e_phentsize
    put(56, &1u16.to_le_bytes()); // e_phnum
    put(EHDR, &1u32.to_le_bytes()); // p_type: PT_LOAD
    put(EHDR + 4, &5u32.to_le_bytes()); // p_flags: R+X
    put(EHDR + 8, &(PAYLOAD_AT as u64).to_le_bytes()); // p_offset
    put(EHDR + 16, &paddr.to_le_bytes()); // p_vaddr
    put(EHDR + 24, &paddr.to_le_bytes()); // p_paddr
    put(EHDR + 32, &(payload.len() as u64).to_le_bytes()); // p_filesz
    put(EHDR + 40, &(payload.len() as u64 + 0x100).to_le_bytes()); // p_memsz (bss)
    put(EHDR + 48, &0x1000u64.to_le_bytes()); // p_align
    image.extend_from_slice(payload);
    image
}

#[test]
fn linux_loader_loads_an_elf_kernel_into_ram_and_not_into_holes() {
    let ram = pc_ram();
    let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let image = elf_image(MIB, &payload);

    let mem = ram.memory();
    let loaded = Elf::load(
        &*mem,
        None,
        &mut Cursor::new(&image),
        Some(GuestAddress(MIB)),
    )
    .unwrap();
    assert_eq!(loaded.kernel_load, GuestAddress(MIB));
    assert_eq!(loaded.kernel_end, MIB + payload.len() as u64 + 0x100);
    let mut back = vec![0u8; payload.len()];
    mem.read_slice(&mut back, GuestAddress(MIB)).unwrap();
    assert_eq!(back, payload);

    // A segment whose bytes would fall into the hole between the blocks is refused.
    let bad = elf_image(4 * MIB - 1000, &payload);
    assert!(Elf::load(&*mem, None, &mut Cursor::new(&bad), None).is_err());
    // Loading into the second block works the same way.
    let high = elf_image(8 * MIB + 0x1000, &payload);
    Elf::load(&*mem, None, &mut Cursor::new(&high), None).unwrap();
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(8 * MIB + 0x1000 + 2999))
            .unwrap(),
        payload[2999]
    );
}

// virtio split-ring layout (virtio 1.1, 2.6), driver side, written through `Bytes`.
const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x2000;
const USED_RING: u64 = 0x3000;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

fn write_descriptor(mem: &RamBlocks, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = DESC_TABLE + 16 * u64::from(index);
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at + 14)).unwrap();
}

fn device_queue(mem: &RamBlocks) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(mem));
    queue
}

/// A device model's request handler, as rust-vmm devices write it: generic over the
/// address space, `memory()` once per request. With `RamList` the view moves into the
/// chain, which therefore stays on this thread (`RamMemory` is !Send) and keeps the read
/// section open until the request is done.
fn serve_one_request<AS: GuestAddressSpace>(queue: &mut Queue, space: &AS) -> (u16, u32) {
    let chain = queue
        .pop_descriptor_chain(space.memory())
        .expect("one chain available");
    let head = chain.head_index();
    let mem = space.memory();
    let mut request = Vec::new();
    Reader::new(&*mem, chain.clone())
        .unwrap()
        .read_to_end(&mut request)
        .unwrap();
    assert_eq!(request, b"GET /status");
    let mut writer = Writer::new(&*mem, chain).unwrap();
    writer.write_all(b"200 OK").unwrap();
    let written = writer.bytes_written() as u32;
    queue.add_used(&*mem, head, written).unwrap();
    (head, written)
}

#[test]
fn virtio_queue_pops_a_chain_whose_buffers_span_two_blocks() {
    let ram = pc_ram();
    let request = GuestAddress(0x10_0000); // in pc.ram
    let response = GuestAddress(8 * MIB + 0x800); // in dimm0
    {
        // The driver: a two-descriptor chain (request, then a device-writable
        // response buffer) at head 0, published in the available ring.
        let mem = ram.memory();
        mem.write_slice(b"GET /status", request).unwrap();
        write_descriptor(&mem, 0, request.0, 11, VIRTQ_DESC_F_NEXT, 1);
        write_descriptor(&mem, 1, response.0, 64, VIRTQ_DESC_F_WRITE, 0);
        mem.write_obj(0u16, GuestAddress(AVAIL_RING + 4)).unwrap(); // ring[0] = head 0
        mem.write_obj(1u16, GuestAddress(AVAIL_RING + 2)).unwrap(); // idx = 1
    }

    // The device, written against vm-memory's traits only, runs on our list.
    let mut queue = device_queue(&ram.memory());
    let (head, written) = serve_one_request(&mut queue, &ram);
    assert_eq!((head, written), (0, 6));
    assert!(queue.pop_descriptor_chain(ram.memory()).is_none());
    let mem = ram.memory();

    // The driver sees the used entry and the response in the other block.
    assert_eq!(mem.read_obj::<u16>(GuestAddress(USED_RING + 2)).unwrap(), 1); // used idx
    assert_eq!(mem.read_obj::<u32>(GuestAddress(USED_RING + 4)).unwrap(), 0); // id = head
    assert_eq!(mem.read_obj::<u32>(GuestAddress(USED_RING + 8)).unwrap(), 6); // len
    let mut buf = [0u8; 6];
    mem.read_slice(&mut buf, response).unwrap();
    assert_eq!(&buf, b"200 OK");
}

#[test]
fn virtio_queue_rejects_a_descriptor_that_points_into_a_hole() {
    let ram = pc_ram();
    let mem = ram.memory();
    // A response buffer that starts in pc.ram and runs 16 bytes into the hole.
    write_descriptor(&mem, 0, 4 * MIB - 16, 32, VIRTQ_DESC_F_WRITE, 0);
    mem.write_obj(0u16, GuestAddress(AVAIL_RING + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL_RING + 2)).unwrap();

    let mut queue = device_queue(&mem);
    let chain = queue.iter(ram.memory()).unwrap().next().unwrap();
    assert!(
        Writer::new(&*mem, chain).is_err(),
        "a buffer that leaves RAM must not be usable"
    );
}

#[test]
fn virtio_queue_mock_driver_runs_on_a_ram_blocks_version() {
    // virtio-queue's own test driver, on `&RamBlocks` loaded under an explicit guard.
    let ram = pc_ram();
    let guard = rcu::read();
    let blocks = ram.blocks(&guard);
    let mut driver =
        virtio_queue::mock::MockSplitQueue::create(blocks, GuestAddress(0x4000), QUEUE_SIZE);
    driver.add_chain(3).unwrap();
    let mut queue: Queue = driver.create_queue().unwrap();
    let chain = queue.pop_descriptor_chain(blocks).unwrap();
    assert_eq!(chain.count(), 3);
    assert_eq!(blocks.num_regions(), 2);
}
