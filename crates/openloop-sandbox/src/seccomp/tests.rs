use super::*;

/// A small interpreter of the subset of classic BPF the builder emits, to check the jump
/// arithmetic without a kernel (the integration tests check it with one).
fn run(program: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let insn = program[pc];
        pc += 1;
        match insn.code {
            LD_ABS => {
                let k = insn.k as usize;
                acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
            }
            JEQ | JSET => {
                let hit = if insn.code == JEQ {
                    acc == insn.k
                } else {
                    acc & insn.k != 0
                };
                pc += if hit { insn.jt } else { insn.jf } as usize;
            }
            RET => return insn.k,
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

fn check(profile: Profile, n: libc::c_long, args: [u64; 6]) -> u32 {
    run(&build(profile), n as u32, NATIVE_ARCH, args)
}

#[test]
fn decisions() {
    use Profile::*;
    for profile in [Sandbox, WarmHost] {
        assert_eq!(check(profile, libc::SYS_read, [0; 6]), RET_ALLOW);
        assert_eq!(check(profile, libc::SYS_bpf, [0; 6]), RET_EPERM);
        assert_eq!(check(profile, libc::SYS_clone3, [0; 6]), RET_ENOSYS);
        let fork_flags = (libc::SIGCHLD | libc::CLONE_CHILD_SETTID) as u64;
        assert_eq!(
            check(profile, libc::SYS_clone, [fork_flags, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        for ns in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, libc::CLONE_NEWTIME] {
            let flags = fork_flags | ns as u64;
            assert_eq!(
                check(profile, libc::SYS_clone, [flags, 0, 0, 0, 0, 0]),
                RET_EPERM
            );
        }
        for v in PERSONALITIES {
            let a = [v as u64, 0, 0, 0, 0, 0];
            assert_eq!(check(profile, libc::SYS_personality, a), RET_ALLOW);
        }
        let a = [0x0040_0000, 0, 0, 0, 0, 0]; // READ_IMPLIES_EXEC
        assert_eq!(check(profile, libc::SYS_personality, a), RET_EPERM);
        let a = [1, libc::TIOCSTI, 0, 0, 0, 0];
        assert_eq!(check(profile, libc::SYS_ioctl, a), RET_EPERM);
        let a = [1, libc::TIOCLINUX, 0, 0, 0, 0];
        assert_eq!(check(profile, libc::SYS_ioctl, a), RET_EPERM);
        let a = [1, libc::TCGETS, 0, 0, 0, 0];
        assert_eq!(check(profile, libc::SYS_ioctl, a), RET_ALLOW);
        let a = [libc::AF_VSOCK as u64, 1, 0, 0, 0, 0];
        assert_eq!(check(profile, libc::SYS_socket, a), RET_EPERM);
        let a = [libc::AF_INET as u64, 1, 0, 0, 0, 0];
        assert_eq!(check(profile, libc::SYS_socket, a), RET_ALLOW);
        assert_eq!(
            run(&build(profile), libc::SYS_read as u32, 0x4000_0003, [0; 6]),
            RET_KILL
        );
    }
    let warm = WARM_HOST_UNSHARE as u64;
    assert_eq!(
        check(Sandbox, libc::SYS_unshare, [warm, 0, 0, 0, 0, 0]),
        RET_EPERM
    );
    assert_eq!(
        check(WarmHost, libc::SYS_unshare, [warm, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
    let high = warm | 1 << 32;
    assert_eq!(
        check(WarmHost, libc::SYS_unshare, [high, 0, 0, 0, 0, 0]),
        RET_EPERM
    );
    let user = libc::CLONE_NEWUSER as u64;
    assert_eq!(
        check(WarmHost, libc::SYS_unshare, [user, 0, 0, 0, 0, 0]),
        RET_EPERM
    );
    let fork_into = WARM_HOST_CLONE as u64;
    assert_eq!(
        check(WarmHost, libc::SYS_clone, [fork_into, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(
        check(Sandbox, libc::SYS_clone, [fork_into, 0, 0, 0, 0, 0]),
        RET_EPERM
    );
    for other in [
        fork_into | libc::CLONE_NEWNET as u64,
        fork_into | libc::CLONE_VM as u64,
        fork_into & !(libc::SIGCHLD as u64),
        user | libc::SIGCHLD as u64,
    ] {
        assert_eq!(
            check(WarmHost, libc::SYS_clone, [other, 0, 0, 0, 0, 0]),
            RET_EPERM,
            "{other:#x}"
        );
    }
    let plain_fork = libc::SIGCHLD as u64;
    assert_eq!(
        check(WarmHost, libc::SYS_clone, [plain_fork, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
    for flags in WARM_HOST_MOUNT_FLAGS {
        let a = [0, 0, 0, flags as u64, 0, 0];
        assert_eq!(check(WarmHost, libc::SYS_mount, a), RET_ALLOW);
        assert_eq!(check(Sandbox, libc::SYS_mount, a), RET_EPERM);
    }
    let a = [0, 0, 0, libc::MS_BIND, 0, 0];
    assert_eq!(check(WarmHost, libc::SYS_mount, a), RET_EPERM);
    assert_eq!(check(WarmHost, libc::SYS_umount2, [0; 6]), RET_EPERM);
    assert_eq!(check(WarmHost, libc::SYS_setns, [0; 6]), RET_EPERM);
}

#[test]
fn program_is_small() {
    for profile in [Profile::Sandbox, Profile::WarmHost] {
        let f = Filter::new(profile);
        assert!(f.program.len() < 400, "{} instructions", f.program.len());
        assert_eq!(f.to_bytes().len(), f.program.len() * 8);
    }
}
