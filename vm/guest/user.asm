; toyos user programs: one image, mapped read-only at 0x400000 in every process.
;
; The image starts with the table of entry points: spawn(n) starts program n, with its
; argument in EBX. The workloads are named after the Xen paper's benchmarks:
;   compute (SPEC INT), syscalls (lmbench null call), spawn (process creation,
;   forkwait), pagetable (ptemod), io (console traffic).

bits 32
org 0x400000

SYS_EXIT    equ 0
SYS_WRITE   equ 1
SYS_GETPID  equ 2
SYS_YIELD   equ 3
SYS_SLEEP   equ 4
SYS_SPAWN   equ 5
SYS_WAIT    equ 6
SYS_MAP     equ 7
SYS_UNMAP   equ 8
SYS_KILL        equ 9                   ; (the CONTAINERS kernel's)
SYS_SETHOSTNAME equ 10
SYS_GETHOSTNAME equ 11

PROGRAM_CHILD equ 6
MAP_BASE    equ 0x404000                ; first address map() accepts

programs:
    dd init                             ; 0
    dd compute                          ; 1
    dd syscalls                         ; 2
    dd spawner                          ; 3
    dd pagetable                        ; 4
    dd io                               ; 5
    dd child                            ; 6
    dd faulty                           ; 7
    dd sleeper                          ; 8
    dd all_workloads                    ; 9
; (programs 10 and up, the CONTAINERS build's, are in a table of their own after the
; rest, so that every program above is where it is in every build)

%macro sys 1
    mov eax, %1
    int 0x80
%endmacro

; ---- init: start the workload named by EBX, wait for it, report --------------------------
init:
    mov ecx, 0
    sys SYS_SPAWN
    cmp eax, 0
    jl .failed
    mov ebx, eax
    sys SYS_WAIT
    mov esi, msg_init_done
    call puts
    call putdec
    call newline
    mov ebx, 0
    sys SYS_EXIT
.failed:
    mov esi, msg_init_failed
    call puts
    mov ebx, 1
    sys SYS_EXIT

; ---- all: every workload in turn (and a faulty process in the middle) ----------------------
all_workloads:
    mov edi, 1
.next:
    mov ebx, edi
    mov ecx, 0
    sys SYS_SPAWN
    mov ebx, eax
    sys SYS_WAIT
    inc edi
    cmp edi, 9
    jne .next
    mov ebx, 0
    sys SYS_EXIT

; ---- compute: integer work with no system calls (SPEC INT) ----------------------------------
compute:
    mov ecx, 3000000
    mov eax, 12345
    xor ebx, ebx
.loop:
    imul eax, eax, 1103515245
    add eax, 12345
    mov edx, eax
    shr edx, 16
    xor ebx, edx
    rol ebx, 3
    test edx, 1
    jz .even
    add ebx, ecx
.even:
    dec ecx
    jnz .loop
    mov esi, msg_compute
    call puts
    mov eax, ebx
    call puthex
    call newline
    mov ebx, 0
    sys SYS_EXIT

; ---- syscalls: the null system call, many times (lmbench) ----------------------------------
syscalls:
    mov edi, 2000
.loop:
    sys SYS_GETPID
    dec edi
    jnz .loop
    mov esi, msg_syscalls
    call puts
    mov ebx, 0
    sys SYS_EXIT

; ---- spawn: create processes and wait for each (forkwait) ----------------------------------
spawner:
    mov edi, 20
    xor ebp, ebp                        ; the sum of their exit codes
.loop:
    mov ebx, PROGRAM_CHILD
    mov ecx, edi
    sys SYS_SPAWN
    cmp eax, 0
    jl .failed
    mov ebx, eax
    sys SYS_WAIT
    add ebp, eax
    dec edi
    jnz .loop
    mov esi, msg_spawn
    call puts
    mov eax, ebp
    call putdec
    call newline
    mov ebx, 0
    sys SYS_EXIT
.failed:
    mov esi, msg_spawn_failed
    call puts
    mov ebx, 1
    sys SYS_EXIT

child:
    sys SYS_GETPID                  ; a child does a little work, then exits
    sys SYS_EXIT                    ; with its argument (EBX) as its exit code

; ---- pagetable: map, touch and unmap ranges of pages (ptemod) ---------------------------
; Each round maps a range of pages, writes and reads each one, and unmaps the range: one
; system call updates several page-table entries, as munmap or mprotect of a range does.
MAP_PAGES   equ 4
pagetable:
    mov edi, 50
    xor ebp, ebp
.loop:
    mov ebx, MAP_BASE
    mov ecx, MAP_PAGES
    sys SYS_MAP
    test eax, eax
    jnz .failed
    mov esi, MAP_BASE
    mov ecx, MAP_PAGES
.touch:                                 ; a fresh page is zero; write it, read it back
    add dword [esi], 0x1234
    add ebp, [esi]
    add esi, 0x1000
    loop .touch
    mov ebx, MAP_BASE
    mov ecx, MAP_PAGES
    sys SYS_UNMAP
    test eax, eax
    jnz .failed
    dec edi
    jnz .loop
    mov esi, msg_pagetable
    call puts
    mov eax, ebp
    call puthex
    call newline
    mov ebx, 0
    sys SYS_EXIT
.failed:
    mov esi, msg_map_failed
    call puts
    mov ebx, 1
    sys SYS_EXIT

; ---- io: console traffic -------------------------------------------------------------------
io:
    mov edi, 1
.loop:
    mov esi, msg_io
    call puts
    mov eax, edi
    call putdec
    call newline
    inc edi
    cmp edi, 41
    jne .loop
    mov ebx, 0
    sys SYS_EXIT

; ---- faulty: touches kernel memory; toyos kills it, the others go on --------------------------
faulty:
    mov esi, msg_faulty
    call puts
    mov eax, [0x1000]                   ; the kernel: supervisor only -> #PF
    mov ebx, 0
    sys SYS_EXIT

; ---- sleeper: sleeps, yields, and says so -------------------------------------------------------
sleeper:
    mov ebx, 3
    sys SYS_SLEEP
    sys SYS_YIELD
    mov esi, msg_sleeper
    call puts
    mov ebx, 0
    sys SYS_EXIT

; ---- a tiny C library ---------------------------------------------------------------------------
; puts: ESI = a zero-terminated string. Keeps EAX.
puts:
    push eax
    push ebx
    push ecx
    mov ebx, esi
    xor ecx, ecx
.length:
    cmp byte [esi + ecx], 0
    je .write
    inc ecx
    jmp .length
.write:
    sys SYS_WRITE
    pop ecx
    pop ebx
    pop eax
    ret

newline:
    push esi
    mov esi, msg_newline
    call puts
    pop esi
    ret

; putdec: EAX, unsigned, in decimal (built on the stack).
putdec:
    push eax
    push ebx
    push ecx
    push edx
    push esi
    sub esp, 16
    lea esi, [esp + 15]
    mov byte [esi], 0
    mov ecx, 10
.digit:
    xor edx, edx
    div ecx
    add dl, '0'
    dec esi
    mov [esi], dl
    test eax, eax
    jnz .digit
    call puts
    add esp, 16
    pop esi
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

; puthex: EAX, as 8 hex digits.
puthex:
    push eax
    push ecx
    push edx
    push esi
    sub esp, 12
    mov esi, esp
    mov ecx, 8
.digit:
    rol eax, 4
    mov edx, eax
    and edx, 15
    mov dl, [hex_digits + edx]
    mov [esi], dl
    inc esi
    loop .digit
    mov byte [esi], 0
    mov esi, esp
    call puts
    add esp, 12
    pop esi
    pop edx
    pop ecx
    pop eax
    ret

hex_digits:         db "0123456789abcdef"
msg_newline:        db 10, 0
msg_init_done:      db "init: workload exited with ", 0
msg_init_failed:    db "init: could not start the workload", 10, 0
msg_compute:        db "compute: checksum ", 0
msg_syscalls:       db "syscalls: 2000 getpid calls", 10, 0
msg_spawn:          db "spawn: 20 children, exit codes sum to ", 0
msg_spawn_failed:   db "spawn: could not create a process", 10, 0
msg_pagetable:      db "pagetable: 50 rounds of 4 pages mapped and unmapped, sum ", 0
msg_map_failed:     db "pagetable: map failed", 10, 0
msg_io:             db "io: line ", 0
msg_faulty:         db "faulty: touching kernel memory", 10, 0
msg_sleeper:        db "sleeper: slept and yielded", 10, 0
%ifdef CONTAINERS
; ---- the programs of the CONTAINERS build ---------------------------------------------------------
CONTAINER_PROGRAMS equ 0x800            ; their table's offset in the image (toyos.asm knows it)
    times CONTAINER_PROGRAMS - ($ - $$) db 0
container_programs:
    ; namespaces, and a container trying to get out of its own
    dd hostname                         ; 10
    dd rename                           ; 11
    dd snoop                            ; 12
    dd scribble                         ; 13
    dd hog                              ; 14
    dd crasher                          ; 15

; ---- hostname: its container's host name, before and after a wait -----------------------------
hostname:
    call print_hostname
    mov ebx, 3
    sys SYS_SLEEP
    call print_hostname
    mov ebx, 0
    sys SYS_EXIT

; ---- rename: sets its container's host name ------------------------------------------------
rename:
    mov ebx, new_hostname
    mov ecx, new_hostname_end - new_hostname
    sys SYS_SETHOSTNAME
    call print_hostname
    mov ebx, 0
    sys SYS_EXIT

; print_hostname: "hostname: NAME" and a new line.
print_hostname:
    sub esp, 36
    mov ebx, esp
    mov ecx, 32
    sys SYS_GETHOSTNAME
    cmp eax, 0
    jge .got
    xor eax, eax
.got:
    mov byte [esp + eax], 0
    mov esi, msg_hostname
    call puts
    mov esi, esp
    call puts
    call newline
    add esp, 36
    ret

; ---- snoop: tries to reach beyond its container ---------------------------------------------
; kill and wait for every pid but its own (another container's processes have none here),
; hand the kernel bad pointers and a bad program number, then read memory that is not its
; own (it is killed there).
snoop:
    sys SYS_GETPID
    mov ebp, eax
    xor edi, edi                        ; calls that got through
    mov esi, 1
.pid:
    cmp esi, ebp
    je .next
    mov ebx, esi
    sys SYS_KILL
    cmp eax, 0
    jne .wait
    inc edi
.wait:
    mov ebx, esi
    sys SYS_WAIT
    cmp eax, -1
    je .next
    inc edi
.next:
    inc esi
    cmp esi, 64
    jbe .pid
    mov esi, msg_snoop_pids
    call puts
    mov eax, edi
    call putdec
    call newline
    xor edi, edi                        ; kernel addresses the kernel took
    mov ebx, 0x101000
    mov ecx, 16
    sys SYS_WRITE
    cmp eax, -1
    je .hostname
    inc edi
.hostname:
    mov ebx, 0x1000
    mov ecx, 8
    sys SYS_SETHOSTNAME
    cmp eax, -1
    je .gethostname
    inc edi
.gethostname:
    mov ebx, 0x400000                   ; (its own code: read-only)
    mov ecx, 8
    sys SYS_GETHOSTNAME
    cmp eax, -1
    je .wrap
    inc edi
.wrap:
    mov ebx, 0xfffffff0                 ; (a buffer that wraps around the top)
    mov ecx, 32
    sys SYS_GETHOSTNAME
    cmp eax, -1
    je .program
    inc edi
.program:
    mov ebx, 0x40000000                 ; (a program number far past the table)
    mov ecx, 0
    sys SYS_SPAWN
    cmp eax, -1
    je .memory
    inc edi
.memory:
    mov esi, msg_snoop_kernel
    call puts
    mov eax, edi
    call putdec
    call newline
    mov esi, msg_snoop_memory
    call puts
    mov eax, [0x100000]                 ; the frames other processes use: not mapped here
    mov ebx, 0
    sys SYS_EXIT

; ---- scribble: writes the console port itself -------------------------------------------------
scribble:
    mov esi, msg_scribble
    call puts
    mov al, '!'
    out 0xe9, al                        ; ring 3, IOPL 0: #GP, and it is killed
    mov ebx, 0
    sys SYS_EXIT

; ---- hog: maps pages until the kernel refuses --------------------------------------------------
hog:
    mov edi, MAP_BASE
    xor ebp, ebp
.map:
    mov ebx, edi
    mov ecx, 1                          ; a page at a time
    sys SYS_MAP
    test eax, eax
    jnz .refused
    mov dword [edi], 1
    inc ebp
    add edi, 0x1000
    cmp edi, 0x7ff000
    jb .map
.refused:
    mov esi, msg_hog
    call puts
    mov eax, ebp
    call putdec
    mov esi, msg_hog_refused
    call puts
    mov ebx, 0
    sys SYS_EXIT

; ---- crasher: hands the kernel a buffer that is not mapped --------------------------------------
; toyos's write checks the buffer is in user space, not that it is mapped: the kernel's own
; page fault is a kernel panic, and one kernel means every container goes down with it.
crasher:
    mov esi, msg_crasher
    call puts
    mov ebx, 0x500000
    mov ecx, 16
    sys SYS_WRITE
    mov ebx, 0
    sys SYS_EXIT

msg_hostname:       db "hostname: ", 0
new_hostname:       db "renamed"
new_hostname_end:
msg_snoop_pids:     db "snoop: kill or wait got through to other pids: ", 0
msg_snoop_kernel:   db "snoop: bad pointers and numbers the kernel took: ", 0
msg_snoop_memory:   db "snoop: reading memory that is not mine", 10, 0
msg_scribble:       db "scribble: writing the console port myself", 10, 0
msg_hog:            db "hog: mapped ", 0
msg_hog_refused:    db " pages, then the kernel refused", 10, 0
msg_crasher:        db "crasher: handing the kernel an unmapped buffer", 10, 0
%endif
