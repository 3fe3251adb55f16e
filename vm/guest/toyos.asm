; toyos: a small protected-mode kernel for vmlab.
;
; Boots at ring 0 with paging off, builds its GDT, IDT, TSS and page tables, then runs
; up to 8 user processes at ring 3, each in its own address space, preempting them
; round robin on the timer (IRQ 0) and serving system calls through INT 0x80.
;
; Memory (physical = kernel virtual: the first 4 MiB are mapped 1:1, supervisor only):
;   0x00ff0  boot arguments, written by the loader (see BOOT_*)
;   0x01000  this kernel
;   0x09000  the boot stack (the idle loop's)
;   0x80000  the user image (vm/guest/user.asm), mapped read-only at 0x400000 in every
;            process
;   0x100000 and up: page frames for page tables, kernel stacks and user pages
; User space: 0x400000 the user image, 0x401000.. pages from map(), 0x7ff000 the stack.
;
; System calls: EAX = number, arguments in EBX, ECX; the result comes back in EAX.
;   0 exit(code)   1 write(buffer, length)   2 getpid()   3 yield()   4 sleep(ticks)
;   5 spawn(program, argument) -> pid   6 wait(pid) -> exit code
;   7 map(address, pages) -> 0 or -1   8 unmap(address, pages) -> 0 or -1 (1 to 8 pages)
; and, built with CONTAINERS:
;   9 kill(pid) -> 0 or -1   10 sethostname(buffer, length) -> 0 or -1
;   11 gethostname(buffer, length) -> length or -1
;
; One source, three builds: every privileged thing the kernel does is an "op" of the
; hardware interface below, with a native body (the instructions) and a paravirtual one
; (hypercalls to a Xen-like VMM, vm/hypervisor/paravirt.py: the kernel runs at ring 1,
; asks for what it used to take, and masks its virtual interrupts by writing a byte).
;   (no define)        the native bodies: bare metal, and full virtualization
;   %define PARAVIRT   the paravirtual bodies: only under the paravirtual VMM (on bare
;                      metal its first hypercall is an invalid opcode)
;   %define PVOPS      one binary for both, as Linux 2.6.23's paravirt_ops: each op is a
;                      call to its native body; at boot the kernel asks CPUID whether a
;                      paravirtual VMM is there, and if so patches every such call to the
;                      paravirtual body (pvops_patch)
;   %define CONTAINERS the native bodies, and OS-level virtualization (OpenVZ's way): every
;                      process belongs to a container with its own pid numbers, host name
;                      and console stream, a CPU weight and a memory limit in pages; the
;                      host's runtime (vm/containers.py) creates, starts and stops them
;                      through the control ports (serve_control), never by writing here
; Read native_<op> beside pv_<op> to see everything a paravirtual port changes.

bits 32
KERNEL_ORIGIN equ 0x1000
org KERNEL_ORIGIN

; ---- constants ------------------------------------------------------------------------
BOOT_WORKLOAD   equ 0x0ff0          ; program number init spawns
BOOT_USER_SIZE  equ 0x0ff4          ; bytes in the user image
BOOT_MEMORY     equ 0x0ff8          ; bytes of physical memory
BOOT_TIMER      equ 0x0ffc          ; timer divisor (cycles between ticks)
BOOT_STACK      equ 0x9000
USER_IMAGE      equ 0x80000
FIRST_FRAME     equ 0x100000
USER_BASE       equ 0x400000
USER_END        equ 0x800000
USER_STACK_PAGE equ 0x7ff000
MAP_MAX_PAGES   equ 8                ; the most pages one map() or unmap() takes

KERNEL_CODE     equ 0x08
KERNEL_DATA     equ 0x10
PV_KERNEL_CODE  equ 0x09                ; ring 1: the VMM's flat segments (Xen's FLAT_RING1_CS)
PV_KERNEL_DATA  equ 0x11
USER_CODE       equ 0x1b
USER_DATA       equ 0x23
TSS_SELECTOR    equ 0x28

PTE_PRESENT     equ 1
PTE_WRITE       equ 2
PTE_USER        equ 4

CONSOLE_PORT    equ 0xe9
EXIT_PORT       equ 0xf4                ; writing here ends the machine (status in AL)
PIC_COMMAND     equ 0x20
PIC_DATA        equ 0x21
PIT_COMMAND     equ 0x43
PIT_CHANNEL0    equ 0x40

%ifdef CONTAINERS
MAX_PROCS       equ 32
%else
MAX_PROCS       equ 8
%endif
; process table entry
P_STATE         equ 0
P_PID           equ 4
P_ESP           equ 8                   ; saved kernel stack pointer
P_CR3           equ 12                  ; page directory
P_KSTACK        equ 16                  ; top of its kernel stack
P_WAKE          equ 20                  ; tick to wake at (SLEEPING) / pid waited for
P_EXIT          equ 24                  ; exit code (ZOMBIE)
P_PARENT        equ 28
%ifdef CONTAINERS
P_CONTAINER     equ 32                  ; its container's entry (0: the idle loop)
P_VPID          equ 36                  ; its pid in its container's namespace
P_PAGES         equ 40                  ; frames charged to its container
P_KILLED        equ 44                  ; 1: the host stopped its container; it dies at
P_SIZE          equ 48                  ; the end of the next tick
%else
P_SIZE          equ 32
%endif
; process states
FREE            equ 0
READY           equ 1
SLEEPING        equ 2
WAITING         equ 3
ZOMBIE          equ 4

%ifdef CONTAINERS
; The scans of the process table stop after the highest slot ever used.
%define PROCS_END [procs_end]
%define PROC_SLOTS [proc_slots]
; A container (its entry in the table at containers; its id is its index + 1). The
; fields from C_ID to the host name are, in order, the record sent to the host.
MAX_CONTAINERS  equ 16
C_ID            equ 0
C_STATE         equ 4
C_WEIGHT        equ 8                   ; CPU weight: timer ticks a round, 1..MAX_WEIGHT
C_MEM_LIMIT     equ 12                  ; frames it may hold (0: no limit)
C_MEM_USED      equ 16                  ; frames its processes hold
C_TICKS         equ 20                  ; timer ticks its processes ran
C_EXIT          equ 24                  ; its init's exit code (-9: stopped by the host)
C_REFUSED       equ 28                  ; frames refused it by its limit
C_HOSTLEN       equ 32
C_HOSTNAME      equ 36                  ; HOSTNAME_MAX bytes
C_LAST_PID      equ 68                  ; its pid namespace's last pid
C_CREDIT        equ 72                  ; ticks left of its weight this round
C_SIZE          equ 76
C_RECORD_DWORDS equ 17                  ; C_ID .. the end of the host name
HOSTNAME_MAX    equ 32
MAX_WEIGHT      equ 100
PROCESS_FRAMES  equ 4                   ; a directory, a user table, a stack, a kernel stack
; container states
C_FREE          equ 0
C_CREATED       equ 1
C_RUNNING       equ 2
C_STOPPED       equ 3
; the control device (vm/hypervisor/containers.py): the host's requests come in, records
; (a reply, or a report that a container stopped) go out
CONTROL_PORT    equ 0xf0                ; IN: the next request (0: none); OUT: end a record
CONTROL_DATA    equ 0xf1                ; IN: the request's next argument; OUT: a dword
CONTROL_PENDING equ 0xf2                ; IN: how many requests wait
STREAM_PORT     equ 0xea                ; OUT: whose console the next bytes are (0: ours)
RECORD_REPLY    equ 1
RECORD_REPORT   equ 2
MAX_REQUESTS    equ 32                  ; served at one poll
; the user image's programs (vm/guest/user.asm): 10 and up have a table of their own
FIRST_CONTAINER_PROGRAM equ 10
PROGRAM_COUNT   equ 16
CONTAINER_PROGRAM_TABLE equ USER_IMAGE + 0x800

; console_stream: the console stream EAX is written next (0: the kernel's own); the port
; is written only when the stream changes.
%macro console_stream 0
    cmp eax, [stream]
    je %%same
    mov [stream], eax
    out STREAM_PORT, al
%%same:
%endmacro
%else
%define PROCS_END procs + P_SIZE * MAX_PROCS
%define PROC_SLOTS MAX_PROCS
%endif

; interrupt frame, from EBP after pushad in isr_common
F_EDI           equ 0
F_ESI           equ 4
F_EBP           equ 8
F_EBX           equ 16
F_EDX           equ 20
F_ECX           equ 24
F_EAX           equ 28
F_VECTOR        equ 32
F_ERROR         equ 36
F_EIP           equ 40
F_CS            equ 44
F_EFLAGS        equ 48
F_ESP           equ 52
F_SS            equ 56
FRAME_SIZE      equ 60

; kprint message, value, printer: print a string, then a value with kputdec or kputhex.
%macro kprint 3
    mov esi, %1
    call kputs
    mov eax, %2
    call %3
%endmacro

; ---- the hardware interface: native instructions, or hypercalls --------------------------
; Which bodies this build assembles: NATIVE_CODE, PARAVIRT_CODE, or both (PVOPS).
%ifdef PVOPS
%define NATIVE_CODE
%define PARAVIRT_CODE
%else
%ifdef PARAVIRT
%define PARAVIRT_CODE
%else
%define NATIVE_CODE
%endif
%endif

; op name: do the op here. Built native or PARAVIRT, its body is inlined; built PVOPS it is
; a call to native_<name>_op that pvops_patch may rewrite to call pv_<name>_op, and the
; site goes on the list pvops_patch reads (PVOP_SITES: site and paravirtual body, pairs
; in reverse order, ending in 0, 0).
%ifdef PVOPS
%define PVOP_SITES 0, 0
%macro op 1
%%site:
    call native_%1_op
%xdefine PVOP_SITES %%site, pv_%1_op, PVOP_SITES
%endmacro
%macro op_jump 1                        ; (an op that does not return: a jump)
%%site:
    jmp native_%1_op
%xdefine PVOP_SITES %%site, pv_%1_op, PVOP_SITES
%endmacro
%else
%ifdef PARAVIRT
%macro op 1
    pv_%1
%endmacro
%else
%macro op 1
    native_%1
%endmacro
%endif
%macro op_jump 1
    op %1
%endmacro
%endif

; Hypercalls (vm/hypervisor/paravirt.py has the table): EAX = number, arguments in EBX,
; ECX, EDX, ESI, EDI, the result in EAX; the gate is VMCALL (INT 0x82 works too).
HYPERVISOR_set_trap_table equ 0
HYPERVISOR_mmu_update     equ 1
HYPERVISOR_stack_switch   equ 3
HYPERVISOR_set_callbacks  equ 4
HYPERVISOR_multicall      equ 13
HYPERVISOR_set_timer_op   equ 15
HYPERVISOR_xen_version    equ 17
HYPERVISOR_console_io     equ 18
HYPERVISOR_vcpu_op        equ 24
HYPERVISOR_mmuext_op      equ 26
HYPERVISOR_sched_op       equ 29
CONSOLEIO_write           equ 0
VCPUOP_register_vcpu_info equ 10
SCHEDOP_yield             equ 0
SCHEDOP_block             equ 1
SCHEDOP_shutdown          equ 2
MMUEXT_PIN_L1_TABLE       equ 0
MMUEXT_PIN_L2_TABLE       equ 1
MMUEXT_UNPIN_TABLE        equ 4
MMUEXT_NEW_BASEPTR        equ 5
MMUEXT_INVLPG_LOCAL       equ 7
; the vcpu_info the kernel shares with the VMM (registered at boot)
VCPU_PENDING              equ 0         ; byte: an event is waiting
VCPU_MASK                 equ 1         ; byte: events are masked (the virtual IF, inverted)
VCPU_EVENTS               equ 4         ; dword: which event channels are pending
VCPU_CR2                  equ 8         ; dword: the address of the last page fault

%macro hypercall 1
    mov eax, %1
    vmcall
%endmacro

; Each op: a comment saying what it does (and its registers), its native body, then its
; paravirtual body.

; load_segments: the kernel's descriptor table and flat data segments
%macro native_load_segments 0
    lgdt [gdt_pointer]
    mov eax, KERNEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
%endmacro
%macro pv_load_segments 0               ; (the VMM starts us on its flat ring-1 segments)
%endmacro

; install_traps: where exceptions, the timer and system calls enter the kernel
%macro native_install_traps 0
    call build_idt
    lidt [idt_pointer]
%endmacro
%macro pv_install_traps 0               ; (sent with the rest of boot's: start_timer)
    call build_trap_table
    mov eax, HYPERVISOR_set_trap_table
    mov ebx, trap_table
    call pv_queue
%endmacro

; prepare_entry: the stack ring 3 enters the kernel on, and what the CPU needs for it
%macro native_prepare_entry 0           ; the TSS: SS0, and its descriptor's base
    call build_tss
%endmacro
%macro pv_prepare_entry 0               ; the kernel stack, the vcpu_info we share with
    mov eax, BOOT_STACK                 ; the VMM and where it delivers events (the
    pv_set_kernel_stack                 ; timer's): no TSS of our own
    mov eax, HYPERVISOR_vcpu_op
    mov ebx, VCPUOP_register_vcpu_info
    mov ecx, vcpu_info
    call pv_queue
    mov eax, HYPERVISOR_set_callbacks
    mov ebx, isr_timer
    call pv_queue
%endmacro

; load_task_register: the TSS
%macro native_load_task_register 0
    mov eax, TSS_SELECTOR
    ltr ax
%endmacro
%macro pv_load_task_register 0          ; (stack_switch tells the VMM the kernel stack)
%endmacro

; enable_paging: run on the kernel's page directory
%macro native_enable_paging 0
    mov eax, kernel_page_directory
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000                  ; PG and WP
    mov cr0, eax
%endmacro
%macro pv_enable_paging 0               ; the VMM checks our page tables (never writable
    call pv_pin_kernel_tables           ; where mapped), pins them and runs on them
%endmacro

; start_timer: IRQ 0 only, the PIT at the boot divisor
%macro native_start_timer 0
    mov al, 0xfe
    out PIC_DATA, al
    mov al, 0x34
    out PIT_COMMAND, al
    mov eax, [BOOT_TIMER]
    out PIT_CHANNEL0, al
    mov al, ah
    out PIT_CHANNEL0, al
%endmacro
%macro pv_start_timer 0                 ; a virtual timer: event channel 0; and boot's
    mov eax, HYPERVISOR_set_timer_op    ; hypercalls, all in one multicall
    mov ebx, [BOOT_TIMER]
    call pv_queue
    call pv_flush
%endmacro

; irq_enable, irq_disable: interrupts on, off
%macro native_irq_enable 0
    sti
%endmacro
%macro pv_irq_enable 0                  ; unmask events; take one that came meanwhile
    mov byte [vcpu_info + VCPU_MASK], 0
    cmp byte [vcpu_info + VCPU_PENDING], 0
    je %%done
    call pv_force_event
%%done:
%endmacro
%macro native_irq_disable 0
    cli
%endmacro
%macro pv_irq_disable 0
    mov byte [vcpu_info + VCPU_MASK], 1
%endmacro

; irq_save: push the interrupt state; irq_restore: pop it (the arithmetic flags are not
; kept). Linux's local_irq_save and local_irq_restore.
%macro native_irq_save 0
    pushfd
%endmacro
%macro pv_irq_save 0
    push dword [vcpu_info]              ; (the mask is its second byte)
%endmacro
%macro native_irq_restore 0
    popfd
%endmacro
%macro pv_irq_restore 0
    test byte [esp + 1], 1              ; masked when saved?
    lea esp, [esp + 4]
    jnz %%done
    pv_irq_enable
%%done:
%endmacro
%ifdef PVOPS                            ; (a call cannot push for its caller: these two
%macro irq_save 0                       ; carry the state in EAX, as Linux's save_fl and
    push eax                            ; restore_fl do)
    op save_flags
    xchg eax, [esp]
%endmacro
%macro irq_restore 0
    xchg eax, [esp]
    op restore_flags
    pop eax
%endmacro
%macro native_save_flags 0              ; EAX = the state
    native_irq_save
    pop eax
%endmacro
%macro pv_save_flags 0
    pv_irq_save
    pop eax
%endmacro
%macro native_restore_flags 0           ; the state in EAX back
    push eax
    native_irq_restore
%endmacro
%macro pv_restore_flags 0
    push eax
    pv_irq_restore
%endmacro
%else
%macro irq_save 0
    op irq_save
%endmacro
%macro irq_restore 0
    op irq_restore
%endmacro
%endif

; safe_halt: wait for an interrupt
%macro native_safe_halt 0
    hlt
%endmacro
%macro pv_safe_halt 0                   ; block until an event
    push eax
    push ebx
    mov ebx, SCHEDOP_block
    hypercall HYPERVISOR_sched_op
    pop ebx
    pop eax
%endmacro

; syscall_entered: what entering through the system-call gate left undone
%macro native_syscall_entered 0         ; (an interrupt gate: IF is already clear)
%endmacro
%macro pv_syscall_entered 0             ; (a trap gate straight from ring 3, no VMM on the
    pv_irq_disable                      ; way: mask events here)
%endmacro

; end_of_interrupt: the timer's interrupt is handled
%macro native_end_of_interrupt 0
    mov al, 0x20
    out PIC_COMMAND, al
%endmacro
%macro pv_end_of_interrupt 0
    and dword [vcpu_info + VCPU_EVENTS], ~1
    mov byte [vcpu_info + VCPU_PENDING], 0
%endmacro

; return_from_interrupt: back to where the interrupt frame on the stack came from
%macro native_return_from_interrupt 0
    iret
%endmacro
%macro pv_return_from_interrupt 0       ; events back on where the frame had them on
    test byte [esp + 9], 2              ; the frame's EFLAGS.IF
    jz %%iret
    pv_irq_enable
%%iret:
    iret
%endmacro

; console_putc: AL to the console
%macro native_console_putc 0
    out CONSOLE_PORT, al
%endmacro
%macro pv_console_putc 0                ; (buffered: sent with the next hypercall)
    call pv_putc
%endmacro

; console_write: ECX bytes at ESI to the console (ESI, ECX and EAX used up)
%macro native_console_write 0
    test ecx, ecx
    jz %%done
%%out:
    lodsb
    out CONSOLE_PORT, al
    loop %%out
%%done:
%endmacro
%macro pv_console_write 0               ; the kernel's text first (it was written first),
    call pv_queue_console               ; then the whole buffer in one hypercall
    mov edx, esi
    mov ebx, CONSOLEIO_write
    mov eax, HYPERVISOR_console_io
    call pv_queue
    call pv_flush
%endmacro

; set_kernel_stack: EAX is the stack ring 3 enters the kernel on from now
%macro native_set_kernel_stack 0
    mov [tss+4], eax
%endmacro
%macro pv_set_kernel_stack 0            ; (queued: the next load_cr3 sends both at once)
    push ecx
    mov ecx, eax
    call pv_queue_stack_switch
    pop ecx
%endmacro

; load_cr3: run on the page directory at EAX
%macro native_load_cr3 0
    mov cr3, eax
%endmacro
%macro pv_load_cr3 0
    push eax
    push edx
    mov edx, eax
    mov eax, MMUEXT_NEW_BASEPTR
    call pv_queue_mmuext
    call pv_flush
    pop edx
    pop eax
%endmacro

; set_user_pte: the page-table entry at EDI gets EAX (a new mapping)
%macro native_set_user_pte 0
    mov [edi], eax
%endmacro
%macro pv_set_user_pte 0                ; (its physical address: the kernel is mapped 1:1;
    call pv_queue_mmu                   ; queued until leave_lazy_mmu)
%endmacro

; clear_user_pte: clear the page-table entry at EDI, which mapped the page at EBX
%macro native_clear_user_pte 0
    mov dword [edi], 0
    invlpg [ebx]
%endmacro
%macro pv_clear_user_pte 0              ; (queued until leave_lazy_mmu)
    call pv_clear_pte
%endmacro

; leave_lazy_mmu: the page-table updates of one system call are done; before the process
; runs again they must have taken effect (Linux's arch_leave_lazy_mmu_mode: under Xen it
; sends the queued updates of a whole range in one multicall)
%macro native_leave_lazy_mmu 0          ; (nothing: each update took effect when written)
%endmacro
%macro pv_leave_lazy_mmu 0
    call pv_flush
%endmacro

; new_address_space: the process at ESI has its page directory and user table built
%macro native_new_address_space 0       ; (nothing to do: the CPU reads them as they are)
%endmacro
%macro pv_new_address_space 0           ; they are page tables now: read-only, checked and
    mov eax, [esi+P_CR3]                ; pinned by the VMM
    call pv_pin_address_space
%endmacro

; release_address_space: the dying directory ESI and its user table EDI are no longer
; used; free the table and run on the kernel's own directory (the caller frees ESI)
%macro native_release_address_space 0
    mov eax, edi
    call free_frame
    mov eax, kernel_page_directory
    mov cr3, eax
%endmacro
%macro pv_release_address_space 0       ; unpin both, writable again, and run on the
    mov eax, esi                        ; kernel's own directory
    call pv_unpin_address_space
    mov eax, edi
    call free_frame
%endmacro

; read_fault_address: EAX = the address of the last page fault
%macro native_read_fault_address 0
    mov eax, cr2
%endmacro
%macro pv_read_fault_address 0          ; the VMM puts CR2 in the vcpu_info
    mov eax, [vcpu_info + VCPU_CR2]
%endmacro

; power_off: AL = exit status
%macro native_power_off 0
    out EXIT_PORT, al
%endmacro
%macro pv_power_off 0                   ; (the last of the console and the shutdown, in
    call pv_shutdown                    ; one multicall)
%endmacro

; ---- boot -----------------------------------------------------------------------------
start:
    mov esp, BOOT_STACK
%ifdef PVOPS
    call pvops_patch                ; bare metal, or a paravirtual VMM? (before any op)
%endif
    op load_segments
    op install_traps
    op prepare_entry
    op load_task_register
    call build_kernel_paging
    op start_timer                  ; a tick every BOOT_TIMER counts on IRQ 0
    mov esi, msg_boot
    call kputs
%ifdef CONTAINERS
    ; no init of our own: the host's requests create and start the containers, each with
    ; its own init, served from the idle loop (and at every tick)
    mov dword [current], procs
    mov dword [procs+P_CR3], kernel_page_directory
    mov dword [procs+P_KSTACK], BOOT_STACK
%else
    ; the first process: init (program 0), told which workload to start
    xor ebx, ebx
    mov ecx, [BOOT_WORKLOAD]
    xor edx, edx
    call create_process
    cmp eax, 0
    jl panic_no_memory
    ; become the idle loop (slot 0): the first timer tick schedules init
    mov dword [current], procs
    mov dword [procs+P_CR3], kernel_page_directory
    mov dword [procs+P_KSTACK], BOOT_STACK
%endif
idle:
    op irq_enable                   ; the idle loop runs with interrupts on
.loop:
    irq_save                        ; local_irq_save: look at the run queue, ticks held off
    op irq_disable
%ifdef CONTAINERS
    call serve_control              ; the host's requests
    cmp dword [running_containers], 0
    je shutdown                     ; no container runs, none asked for: the machine is done
%endif
    call any_ready
    irq_restore                     ; local_irq_restore: interrupts on again
    test eax, eax
    jnz .yield
    op safe_halt                    ; nothing to run: sleep until the next tick
    jmp .loop
.yield:
    call schedule
    jmp .loop

panic_no_memory:
    mov esi, msg_no_memory
    jmp panic_message

; ---- descriptor tables -------------------------------------------------------------------
%ifdef NATIVE_CODE
build_idt:
    ; exceptions 0..19 have their own stubs; IRQ 0 is vector 32; system calls INT 0x80
    xor ecx, ecx
.next:
    mov eax, isr_spurious
    cmp ecx, 20
    jae .not_exception
    mov eax, [isr_table + ecx*4]
.not_exception:
    cmp ecx, 32
    jne .not_timer
    mov eax, isr_timer
.not_timer:
    cmp ecx, 0x80
    jne .not_syscall
    mov eax, isr_syscall
.not_syscall:
    lea edi, [idt + ecx*8]
    mov edx, eax
    and edx, 0xffff
    or edx, KERNEL_CODE << 16
    mov [edi], edx
    and eax, 0xffff0000
    or eax, 0x8e00                  ; present, DPL 0, 32-bit interrupt gate
    cmp ecx, 0x80
    jne .store
    or eax, 0x6000                  ; INT 0x80 may be used from ring 3
.store:
    mov [edi+4], eax
    inc ecx
    cmp ecx, 0x81
    jne .next
    ret

build_tss:
    mov dword [tss+8], KERNEL_DATA   ; SS0
    mov eax, tss
    mov [gdt_tss+2], al              ; base 7..0
    mov [gdt_tss+3], ah              ; base 15..8
    shr eax, 16
    mov [gdt_tss+4], al              ; base 23..16
    mov [gdt_tss+7], ah              ; base 31..24
    ret
%endif

%ifdef PARAVIRT_CODE
build_trap_table:
    ; the trap table the VMM bounces exceptions through, and the system-call gate it
    ; installs for ring 3 to enter the kernel directly: entries of (vector, flags, cs,
    ; handler), flags = the DPL (and 4: mask events on the way in, an interrupt gate)
    xor ecx, ecx
    mov edi, trap_table
.next:
    mov eax, (PV_KERNEL_CODE << 16) | (4 << 8)
    or eax, ecx                     ; vector, flags 4, the kernel's code segment
    mov [edi], eax
    mov eax, [isr_table + ecx*4]
    mov [edi + 4], eax
    add edi, 8
    inc ecx
    cmp ecx, 20
    jne .next
    mov dword [edi], 0x80 | (3 << 8) | (PV_KERNEL_CODE << 16)  ; INT 0x80 from ring 3
    mov dword [edi + 4], isr_syscall
    mov dword [edi + 12], 0                                     ; the end
    ret
%endif

build_kernel_paging:
    ; one page table maps the first 4 MiB 1:1, supervisor only
    mov ecx, 1024
    xor eax, eax
    mov edi, kernel_page_table
.map:
    mov edx, eax
    or edx, PTE_PRESENT | PTE_WRITE
    mov [edi], edx
    add edi, 4
    add eax, 0x1000
    loop .map
    mov eax, kernel_page_table
    or eax, PTE_PRESENT | PTE_WRITE
    mov [kernel_page_directory], eax
    op enable_paging
    ; the frame allocator starts after the kernel's own memory
    mov dword [next_frame], FIRST_FRAME
    ret

; ---- interrupt entry -------------------------------------------------------------------
; Each stub pushes a dummy error code where the CPU pushes none, then its vector.
%macro stub 1
isr%1:
    push 0
    push %1
    jmp isr_common
%endmacro
%macro stub_with_error 1
isr%1:
    push %1
    jmp isr_common
%endmacro

    stub 0
    stub 1
    stub 2
    stub 3
    stub 4
    stub 5
    stub 6
    stub 7
    stub_with_error 8
    stub 9
    stub_with_error 10
    stub_with_error 11
    stub_with_error 12
    stub_with_error 13
    stub_with_error 14
    stub 15
    stub 16
    stub_with_error 17
    stub 18
    stub 19
isr_timer:
    push 0
    push 32
    jmp isr_common
isr_syscall:
    op syscall_entered
    push 0
    push 0x80
    jmp isr_common
isr_spurious:
    push 0
    push 255
    jmp isr_common

isr_common:
    pushad
    mov ebp, esp
    mov eax, [ebp+F_VECTOR]
    cmp eax, 0x80
    je syscall
    cmp eax, 32
    je timer_interrupt
    jb exception
    jmp return_to_process           ; a spurious interrupt

exception:
    test dword [ebp+F_CS], 2        ; (ring 3: a user's; ring 0, or 1 paravirtualized: ours)
    jz kernel_panic
    ; a user fault kills the process that made it
    mov ebx, [current]
%ifdef CONTAINERS
    mov eax, [ebx+P_CONTAINER]      ; said on its container's console, by its own pid
    mov eax, [eax+C_ID]
    console_stream
    kprint msg_killed_1, [ebx+P_VPID], kputdec
%else
    kprint msg_killed_1, [ebx+P_PID], kputdec
%endif
    kprint msg_killed_2, [ebp+F_VECTOR], kputdec
    kprint msg_killed_3, [ebp+F_EIP], kputhex
    mov al, 10
    call kputc
    mov eax, -1
    jmp exit_current

timer_interrupt:
    inc dword [ticks]
    op end_of_interrupt
%ifdef CONTAINERS
    mov ebx, [current]              ; the tick is charged to the current container
    mov eax, [ebx+P_CONTAINER]
    test eax, eax
    jz .charged                     ; (the idle loop: nobody's)
    inc dword [eax+C_TICKS]
    dec dword [eax+C_CREDIT]
.charged:
    call serve_control              ; the host's requests
    mov ebx, [current]
    cmp dword [ebx+P_KILLED], 0     ; its container was stopped: it dies now
    je .alive
    mov eax, -9
    jmp exit_current
.alive:
%endif
    call wake_sleepers
    call schedule                   ; preempt: round robin
    jmp return_to_process

return_to_process:
    popad
    add esp, 8                      ; vector and error code
    op_jump return_from_interrupt

; ---- the scheduler ---------------------------------------------------------------------
; schedule: save the current process's kernel stack, pick the next READY process after it
; (round robin), switch to its stack and address space. Returns on the new stack.
schedule:
    irq_save                        ; like Linux's spin_lock_irqsave
    op irq_disable
    mov ebx, [current]
    mov [ebx+P_ESP], esp
%ifdef CONTAINERS
    mov esi, 2                      ; two passes: the containers with ticks left, then all
.pass:                              ; of them again with their weights' worth
%endif
    mov ecx, PROC_SLOTS
    mov edx, ebx
.find:
    add edx, P_SIZE
    cmp edx, PROCS_END
    jb .check
    mov edx, procs + P_SIZE         ; slot 0 is the idle loop: skip it
.check:
    cmp dword [edx+P_STATE], READY
%ifdef CONTAINERS
    jne .next
    mov eax, [edx+P_CONTAINER]      ; ready, and its container has ticks left this round
    cmp dword [eax+C_CREDIT], 0
    jg .switch
.next:
%else
    je .switch
%endif
    loop .find
%ifdef CONTAINERS
    call refill_credits             ; a new round: each container its weight in ticks
    dec esi
    jnz .pass
%endif
    ; nothing is ready: the current one goes on if it can, else idle
    cmp dword [ebx+P_STATE], READY
    je .done
    mov edx, procs
.switch:
    cmp edx, ebx                    ; the same process again: nothing to switch
    je .done
    mov [current], edx
    mov eax, [edx+P_KSTACK]
    op set_kernel_stack             ; ESP0 for the next entry from ring 3
    mov eax, [edx+P_CR3]
    op load_cr3
    mov esp, [edx+P_ESP]
.done:
    irq_restore                     ; like spin_unlock_irqrestore
    ret

; any_ready -> EAX = 1 when some process (not the idle loop) is READY, else 0.
any_ready:
    xor eax, eax
    mov edx, procs + P_SIZE
.next:
    cmp dword [edx+P_STATE], READY
    jne .skip
    mov eax, 1
    ret
.skip:
    add edx, P_SIZE
    cmp edx, PROCS_END
    jb .next
    ret

wake_sleepers:
    mov edx, procs + P_SIZE
.next:
    cmp dword [edx+P_STATE], SLEEPING
    jne .skip
    mov eax, [ticks]
    cmp eax, [edx+P_WAKE]
    jb .skip
    mov dword [edx+P_STATE], READY
.skip:
    add edx, P_SIZE
    cmp edx, PROCS_END
    jb .next
    ret

; ---- system calls ----------------------------------------------------------------------
syscall:
    mov eax, [ebp+F_EAX]
    cmp eax, SYSCALLS - 1
    ja .bad
    jmp [syscall_table + eax*4]
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

sys_exit:
    mov eax, [ebp+F_EBX]
    jmp exit_current

sys_write:
    mov esi, [ebp+F_EBX]
    mov ecx, [ebp+F_ECX]
    ; the buffer must lie in user space
    cmp esi, USER_BASE
    jb .bad
    lea eax, [esi+ecx]
    cmp eax, USER_END
    ja .bad
    cmp eax, esi
    jb .bad
    mov [ebp+F_EAX], ecx
    irq_save                        ; spin_lock_irqsave(&console_lock)
    op irq_disable
%ifdef CONTAINERS
    mov ebx, [current]              ; onto the caller's container's console
    mov eax, [ebx+P_CONTAINER]
    mov eax, [eax+C_ID]
    console_stream
%endif
    op console_write
    irq_restore                     ; spin_unlock_irqrestore(&console_lock)
    jmp return_to_process
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

sys_getpid:
    mov ebx, [current]
%ifdef CONTAINERS
    mov eax, [ebx+P_VPID]           ; its pid in its own namespace
%else
    mov eax, [ebx+P_PID]
%endif
    mov [ebp+F_EAX], eax
    jmp return_to_process

sys_yield:
    mov dword [ebp+F_EAX], 0
    call schedule
    jmp return_to_process

sys_sleep:
    mov ebx, [current]
    mov eax, [ticks]
    add eax, [ebp+F_EBX]
    mov [ebx+P_WAKE], eax
    mov dword [ebx+P_STATE], SLEEPING
    mov dword [ebp+F_EAX], 0
    call schedule
    jmp return_to_process

sys_spawn:
    mov ebx, [ebp+F_EBX]            ; program
%ifdef CONTAINERS
    cmp ebx, PROGRAM_COUNT          ; (one the image has: no kernel fault for a bad number)
    jae .bad
%endif
    mov ecx, [ebp+F_ECX]            ; its argument
    mov edx, [current]
%ifdef CONTAINERS
    mov eax, [edx+P_CONTAINER]      ; a child is in its parent's container
    mov [spawn_container], eax
%endif
    call create_process
    mov [ebp+F_EAX], eax
    jmp return_to_process
%ifdef CONTAINERS
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process
%endif

sys_wait:
    mov eax, [ebp+F_EBX]
%ifdef CONTAINERS
    call find_in_namespace          ; only a pid of the caller's own namespace
%else
    call find_process
%endif
    test edx, edx
    jz .none
    mov ebx, [current]
    cmp [edx+P_PARENT], ebx
    jne .none
    cmp dword [edx+P_STATE], ZOMBIE
    je .reap
%ifdef CONTAINERS
    mov eax, [edx+P_PID]            ; (exit_current wakes us by the global pid)
%endif
    ; sleep until the child exits: exit_current fills in our EAX and wakes us
    mov [ebx+P_WAKE], eax
    mov dword [ebx+P_STATE], WAITING
    call schedule
    jmp return_to_process
.reap:
    mov eax, [edx+P_EXIT]
    mov [ebp+F_EAX], eax
    mov dword [edx+P_STATE], FREE
    jmp return_to_process
.none:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

sys_map:                            ; map(EBX = address, ECX = pages): fresh zeroed pages
    call user_range                 ; EDI = the first page's PTE, ECX = pages, or EDI = 0
    test edi, edi
    jz .bad
    push ecx
    push edi
.free:                              ; every page of the range must be unmapped
    test dword [edi], PTE_PRESENT
    jnz .taken
    add edi, 4
    loop .free
    pop edi
    pop ecx
.map:
%ifdef CONTAINERS
    call container_charge_page      ; within its container's memory limit?
    test eax, eax
    jz .full
%endif
    call alloc_frame
    test eax, eax
    jz .no_frame                    ; (the pages mapped so far stay mapped)
    or eax, PTE_PRESENT | PTE_WRITE | PTE_USER
    op set_user_pte
    add edi, 4
    loop .map
    op leave_lazy_mmu
    mov dword [ebp+F_EAX], 0
    jmp return_to_process
.taken:
    pop edi
    pop ecx
    jmp .bad
.no_frame:
%ifdef CONTAINERS
    call container_uncharge_page
%endif
.full:
    op leave_lazy_mmu
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

sys_unmap:                          ; unmap(EBX = address, ECX = pages): all must be mapped
    call user_range
    test edi, edi
    jz .bad
    push ecx
    push edi
.mapped:
    test dword [edi], PTE_PRESENT
    jz .hole
    add edi, 4
    loop .mapped
    pop edi
    pop ecx
    mov ebx, [ebp+F_EBX]            ; (the page, for clear_user_pte)
.unmap:
    mov eax, [edi]
    op clear_user_pte               ; the PTE at EDI, and the TLB's entry for EBX
    and eax, 0xfffff000
    push ecx
    call free_frame
%ifdef CONTAINERS
    call container_uncharge_page
%endif
    pop ecx
    add edi, 4
    add ebx, 0x1000
    loop .unmap
    op leave_lazy_mmu
    mov dword [ebp+F_EAX], 0
    jmp return_to_process
.hole:
    pop edi
    pop ecx
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

%ifdef CONTAINERS
; container_charge_page: the current process's container takes one page of its memory
; limit -> EAX = 1, or 0 when it is at its limit (and the refusal is counted)
container_charge_page:
    push ebx
    push ecx
    mov ebx, [current]
    mov ecx, [ebx+P_CONTAINER]
    mov eax, [ecx+C_MEM_LIMIT]
    test eax, eax                   ; (0: no limit)
    jz .room
    cmp [ecx+C_MEM_USED], eax
    jb .room
    inc dword [ecx+C_REFUSED]
    xor eax, eax
    jmp .done
.room:
    inc dword [ebx+P_PAGES]
    inc dword [ecx+C_MEM_USED]
    mov eax, 1
.done:
    pop ecx
    pop ebx
    ret

container_uncharge_page:            ; the current process's container gives a page back
    push ebx
    push ecx
    mov ebx, [current]
    dec dword [ebx+P_PAGES]
    mov ecx, [ebx+P_CONTAINER]
    dec dword [ecx+C_MEM_USED]
    pop ecx
    pop ebx
    ret
%endif

; user_range: the frame's EBX = a page-aligned user address, ECX = a count of pages from
; 1 to MAP_MAX_PAGES, all above the image and below the stack -> EDI = the address of the
; first page's PTE in the current process's page table and ECX = the count; or EDI = 0.
user_range:
    xor edi, edi
    mov ecx, [ebp+F_ECX]
    test ecx, ecx
    jz .done
    cmp ecx, MAP_MAX_PAGES
    ja .done
    mov eax, ecx                    ; the last page must be a user page too
    dec eax
    shl eax, 12
    add eax, [ebp+F_EBX]
    jc .done
    call user_pte
    test edi, edi
    jz .done
    mov eax, [ebp+F_EBX]
    call user_pte
.done:
    ret

; user_pte: EAX = a page-aligned user address above the image, below the stack ->
; EDI = the address of its PTE in the current process's page table, or 0.
user_pte:
    xor edi, edi
    test eax, 0xfff
    jnz .done
    cmp eax, USER_BASE + 0x1000 * 4
    jb .done
    cmp eax, USER_STACK_PAGE
    jae .done
    mov ebx, [current]
    mov edi, [ebx+P_CR3]
    mov edi, [edi+4]                ; the page table of 0x400000..0x7fffff
    and edi, 0xfffff000
    sub eax, USER_BASE
    shr eax, 10                     ; (address >> 12) * 4
    add edi, eax
.done:
    ret

; ---- processes -------------------------------------------------------------------------
; create_process: EBX = program, ECX = argument, EDX = parent -> EAX = pid, or -1.
; (Built with CONTAINERS: in the container at [spawn_container]; the pid is its own there.)
create_process:
    push ebx
    push ecx
    push edx
    ; a free slot (slot 0 is the idle loop)
    mov esi, procs + P_SIZE
.find:
    cmp dword [esi+P_STATE], FREE
    je .found
    add esi, P_SIZE
    cmp esi, procs + P_SIZE * MAX_PROCS
    jb .find
    jmp .fail
.found:
%ifdef CONTAINERS
    mov eax, [spawn_container]      ; its four frames within the container's limit?
    mov ecx, [eax+C_MEM_LIMIT]
    test ecx, ecx
    jz .room
    sub ecx, [eax+C_MEM_USED]
    cmp ecx, PROCESS_FRAMES
    jge .room
    add dword [eax+C_REFUSED], PROCESS_FRAMES
    jmp .fail
.room:
    lea eax, [esi+P_SIZE]           ; a slot past the highest used: the scans go on to it
    cmp eax, [procs_end]
    jbe .inside
    mov [procs_end], eax
    inc dword [proc_slots]
.inside:
%endif
    ; page directory: the kernel's table, and a user table
    call alloc_frame
    test eax, eax
    jz .fail
    mov [esi+P_CR3], eax
    mov edi, eax
    mov eax, [kernel_page_directory]
    mov [edi], eax
    call alloc_frame
    test eax, eax
    jz .fail
    mov ebx, eax                    ; the user page table
    or eax, PTE_PRESENT | PTE_WRITE | PTE_USER
    mov [edi+4], eax
    ; the user image, read-only, shared by every process
    mov ecx, [BOOT_USER_SIZE]
    add ecx, 0xfff
    shr ecx, 12
    mov eax, USER_IMAGE | PTE_PRESENT | PTE_USER
    mov edx, ebx
.image:
    mov [edx], eax
    add eax, 0x1000
    add edx, 4
    loop .image
    ; a stack page
    call alloc_frame
    test eax, eax
    jz .fail
    or eax, PTE_PRESENT | PTE_WRITE | PTE_USER
    mov [ebx + 4 * 1023], eax
    op new_address_space
    ; a kernel stack, with the frame that its first return to user mode pops
    call alloc_frame
    test eax, eax
    jz .fail
    add eax, 0x1000
    mov [esi+P_KSTACK], eax
    lea edi, [eax - FRAME_SIZE - 8]  ; (8: schedule's saved EFLAGS and return address)
    mov [esi+P_ESP], edi
    mov dword [edi], 0x202          ; EFLAGS popped by schedule's popfd
    mov dword [edi+4], return_to_process
    add edi, 8
    push edi
    mov ecx, FRAME_SIZE / 4
    xor eax, eax
    rep stosd
    pop edi
    mov ebx, [esp+8]                ; program
%ifdef CONTAINERS
    cmp ebx, FIRST_CONTAINER_PROGRAM
    jb .program
    mov eax, [CONTAINER_PROGRAM_TABLE - FIRST_CONTAINER_PROGRAM * 4 + ebx*4]
    jmp .entry
.program:
%endif
    mov eax, [USER_BASE_PHYS_TABLE + ebx*4]
.entry:
    mov [edi+F_EIP], eax
    mov eax, [esp+4]                ; argument, in EBX
    mov [edi+F_EBX], eax
    mov dword [edi+F_CS], USER_CODE
    mov dword [edi+F_EFLAGS], 0x202
    mov dword [edi+F_ESP], USER_END
    mov dword [edi+F_SS], USER_DATA
    ; fill in the slot
    inc dword [last_pid]
    mov eax, [last_pid]
    mov [esi+P_PID], eax
    mov edx, [esp]
    mov [esi+P_PARENT], edx
%ifdef CONTAINERS
    mov edx, [spawn_container]      ; its container, its pid there, its frames charged
    mov [esi+P_CONTAINER], edx
    inc dword [edx+C_LAST_PID]
    mov eax, [edx+C_LAST_PID]
    mov [esi+P_VPID], eax
    mov dword [esi+P_PAGES], PROCESS_FRAMES
    add dword [edx+C_MEM_USED], PROCESS_FRAMES
    mov dword [esi+P_KILLED], 0
%endif
    mov dword [esi+P_STATE], READY
    add esp, 12
    ret
.fail:
    add esp, 12
    mov eax, -1
    ret

; The entry points of the user programs: the user image starts with their table.
USER_BASE_PHYS_TABLE equ USER_IMAGE

; exit_current: EAX = exit code. Frees the address space, wakes a waiting parent, and
; schedules another process. Never returns.
exit_current:
    mov ebx, [current]
    mov [ebx+P_EXIT], eax
    mov dword [ebx+P_STATE], ZOMBIE
    call free_address_space
%ifdef CONTAINERS
    mov ecx, [ebx+P_CONTAINER]
    cmp dword [ecx+C_STATE], C_RUNNING
    jne .nobody                     ; its container was stopped: nobody waits for it
    cmp dword [ebx+P_VPID], 1
    jne .not_init
    ; a container's init exited: the container stops, its other processes with it
    mov eax, [ebx+P_EXIT]
    mov [ecx+C_EXIT], eax
    mov dword [ebx+P_STATE], FREE
    call container_stopped
    jmp .schedule
.not_init:
    cmp dword [ebx+P_PARENT], 0
    jne .parent
.nobody:                            ; (started by the host's exec: no parent to wait)
    mov dword [ebx+P_STATE], FREE
    jmp .schedule
.parent:
%else
    ; init's exit ends the machine
    cmp dword [ebx+P_PID], 1
    je shutdown
%endif
    ; a parent waiting for this pid gets the code now
    mov edx, [ebx+P_PARENT]
    test edx, edx
    jz .schedule
    cmp dword [edx+P_STATE], WAITING
    jne .schedule
    mov ecx, [ebx+P_PID]
    cmp [edx+P_WAKE], ecx
    jne .schedule
    mov edi, [edx+P_ESP]
    mov eax, [ebx+P_EXIT]
    mov [edi + 8 + F_EAX], eax      ; its saved frame (after schedule's EFLAGS, return)
    mov dword [edx+P_STATE], READY
    mov dword [ebx+P_STATE], FREE
.schedule:
    call schedule
    jmp return_to_process

free_address_space:
    ; the user pages (not the shared image), the page table, the directory, and later
    ; the kernel stack (it is in use until the switch: kept until the slot is reused)
    push ebx
%ifdef CONTAINERS
    mov eax, [ebx+P_CONTAINER]      ; its frames no longer count against its container
    mov ecx, [ebx+P_PAGES]
    sub [eax+C_MEM_USED], ecx
    mov dword [ebx+P_PAGES], 0
%endif
    mov esi, [ebx+P_CR3]
    mov edi, [esi+4]
    and edi, 0xfffff000
    mov ecx, [BOOT_USER_SIZE]
    add ecx, 0xfff
    shr ecx, 12
.page:
    cmp ecx, 1024
    jae .table
    mov eax, [edi + ecx*4]
    test eax, PTE_PRESENT
    jz .skip
    and eax, 0xfffff000
    push ecx
    call free_frame
    pop ecx
.skip:
    inc ecx
    jmp .page
.table:
    op release_address_space        ; the table freed, the kernel's own directory loaded
    mov eax, esi
    call free_frame
    pop ebx
    mov dword [ebx+P_CR3], kernel_page_directory
    ; its kernel stack is in use until the switch: free the one the last exit left
    mov eax, [dead_stack]
    test eax, eax
    jz .keep
    call free_frame
.keep:
    mov eax, [ebx+P_KSTACK]
    sub eax, 0x1000
    mov [dead_stack], eax
    ret

; find_process: EAX = pid -> EDX = its slot, or 0.
find_process:
    mov edx, procs + P_SIZE
.next:
    cmp dword [edx+P_STATE], FREE
    je .skip
    cmp [edx+P_PID], eax
    je .done
.skip:
    add edx, P_SIZE
    cmp edx, procs + P_SIZE * MAX_PROCS
    jb .next
    xor edx, edx
.done:
    ret

%ifdef CONTAINERS
; ---- containers ------------------------------------------------------------------------
; find_in_namespace: EAX = a pid of the current process's namespace -> EDX = its slot, or 0.
; Another container's processes have no pid here: they cannot be named, let alone reached.
find_in_namespace:
    mov ecx, [current]
    mov ecx, [ecx+P_CONTAINER]
    mov edx, procs + P_SIZE
.next:
    cmp dword [edx+P_STATE], FREE
    je .skip
    cmp [edx+P_VPID], eax
    jne .skip
    cmp [edx+P_CONTAINER], ecx
    je .done
.skip:
    add edx, P_SIZE
    cmp edx, PROCS_END
    jb .next
    xor edx, edx
.done:
    ret

; kill(pid): a process of the caller's namespace dies with exit code -9 (not its init: as
; in Linux, a namespace's init cannot be killed from inside it).
sys_kill:
    mov eax, [ebp+F_EBX]
    cmp eax, 1
    jbe .bad
    call find_in_namespace
    test edx, edx
    jz .bad
    cmp dword [edx+P_STATE], ZOMBIE
    je .bad
    cmp edx, [current]
    je .self
    call kill_process
    mov dword [ebp+F_EAX], 0
    jmp return_to_process
.self:
    mov eax, -9
    jmp exit_current
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

; user_buffer: ESI = a user address, ECX = a length of 1..HOSTNAME_MAX, EDX = the PTE bits
; each of its pages needs -> CF set when it is not all there (the kernel then never
; touches it: a page fault of ours would be a kernel panic).
user_buffer:
    push eax
    push edi
    cmp esi, USER_BASE
    jb .bad
    cmp esi, USER_END
    jae .bad
    lea eax, [esi+ecx]
    cmp eax, USER_END
    ja .bad
    mov edi, [current]
    mov edi, [edi+P_CR3]
    mov edi, [edi+4]                ; the page table of 0x400000..0x7fffff
    and edi, 0xfffff000
    mov eax, esi                    ; its first page
    sub eax, USER_BASE
    shr eax, 12
    mov eax, [edi+eax*4]
    and eax, edx
    cmp eax, edx
    jne .bad
    lea eax, [esi+ecx-1]            ; and its last
    sub eax, USER_BASE
    shr eax, 12
    mov eax, [edi+eax*4]
    and eax, edx
    cmp eax, edx
    jne .bad
    clc
    pop edi
    pop eax
    ret
.bad:
    stc
    pop edi
    pop eax
    ret

; hostname_arguments: the caller's EBX (buffer) and ECX (length), checked -> ESI, ECX,
; EBX = its container; CF set when they are bad. EDX = the PTE bits the buffer needs.
hostname_arguments:
    mov esi, [ebp+F_EBX]
    mov ecx, [ebp+F_ECX]
    test ecx, ecx
    jz .bad
    cmp ecx, HOSTNAME_MAX
    ja .bad
    call user_buffer
    jc .bad
    mov ebx, [current]
    mov ebx, [ebx+P_CONTAINER]
    clc
    ret
.bad:
    stc
    ret

; sethostname(buffer, length): the caller's container's host name (1..HOSTNAME_MAX bytes).
sys_sethostname:
    mov edx, PTE_PRESENT | PTE_USER
    call hostname_arguments
    jc .bad
    lea edi, [ebx+C_HOSTNAME]
    mov [ebx+C_HOSTLEN], ecx
    push ecx
    rep movsb                       ; (from the caller's pages, checked present)
    pop ecx
    neg ecx                         ; the rest of the name's bytes cleared
    add ecx, HOSTNAME_MAX
    xor eax, eax
    rep stosb
    mov dword [ebp+F_EAX], 0
    jmp return_to_process
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

; gethostname(buffer, length) -> the name's length: its container's host name, at most
; length bytes of it copied (no terminating zero).
sys_gethostname:
    mov edx, PTE_PRESENT | PTE_USER | PTE_WRITE
    call hostname_arguments
    jc .bad
    mov eax, [ebx+C_HOSTLEN]
    cmp ecx, eax
    jbe .copy
    mov ecx, eax
.copy:
    mov [ebp+F_EAX], ecx
    mov edi, esi
    lea esi, [ebx+C_HOSTNAME]
    rep movsb                       ; (into the caller's pages, checked writable)
    jmp return_to_process
.bad:
    mov dword [ebp+F_EAX], -1
    jmp return_to_process

; kill_process: EDX = a process, not the current one: its memory freed now, -9 its exit
; code; a parent waiting for it wakes. Keeps EBX, ECX, EDX.
kill_process:
    push ebx
    push ecx
    push edx
    mov ebx, edx
    cmp dword [ebx+P_STATE], ZOMBIE
    je .done                        ; (already dead: its memory is gone)
    call free_address_space         ; (leaves the kernel's own directory loaded)
    mov eax, [current]
    mov eax, [eax+P_CR3]
    op load_cr3
    mov dword [ebx+P_EXIT], -9
    mov dword [ebx+P_STATE], ZOMBIE
    mov edx, [ebx+P_PARENT]
    test edx, edx
    jz .done
    cmp dword [edx+P_STATE], WAITING
    jne .done
    mov ecx, [ebx+P_PID]
    cmp [edx+P_WAKE], ecx
    jne .done
    mov edi, [edx+P_ESP]
    mov dword [edi + 8 + F_EAX], -9 ; its saved frame (after schedule's EFLAGS, return)
    mov dword [edx+P_STATE], READY
    mov dword [ebx+P_STATE], FREE
.done:
    pop edx
    pop ecx
    pop ebx
    ret

; container_stopped: ECX = a running container whose init died or that the host stops:
; every process of it dies (the current one, if it is one, at the end of the next tick),
; and the host gets its record.
container_stopped:
    push ebx
    push edx
    mov dword [ecx+C_STATE], C_STOPPED
    dec dword [running_containers]
    mov edx, procs + P_SIZE
.next:
    cmp [edx+P_CONTAINER], ecx
    jne .skip
    cmp dword [edx+P_STATE], FREE
    je .skip
    cmp edx, [current]
    je .current
    call kill_process
    mov dword [edx+P_STATE], FREE
    jmp .skip
.current:
    mov dword [edx+P_KILLED], 1
.skip:
    add edx, P_SIZE
    cmp edx, PROCS_END
    jb .next
    mov eax, RECORD_REPORT
    call send_record
    pop edx
    pop ebx
    ret

; refill_credits: a new round of the weighted scheduler: each container gets its weight
; in ticks.
refill_credits:
    push ecx
    mov ecx, containers
.next:
    mov eax, [ecx+C_WEIGHT]
    mov [ecx+C_CREDIT], eax
    add ecx, C_SIZE
    cmp ecx, containers + C_SIZE * MAX_CONTAINERS
    jb .next
    pop ecx
    ret

; send_record: ECX = a container, EAX = RECORD_REPLY or RECORD_REPORT: its figures to the
; host (C_ID .. its host name, then its live processes), the record's kind last.
send_record:
    push eax
    push ecx
    push edx
    push esi
    mov esi, ecx
    mov edx, C_RECORD_DWORDS
.field:
    lodsd
    out CONTROL_DATA, eax
    dec edx
    jnz .field
    xor eax, eax                    ; its processes
    mov edx, procs + P_SIZE
.count:
    cmp [edx+P_CONTAINER], ecx
    jne .other
    cmp dword [edx+P_STATE], FREE
    je .other
    inc eax
.other:
    add edx, P_SIZE
    cmp edx, PROCS_END
    jb .count
    out CONTROL_DATA, eax
    pop esi
    pop edx
    pop ecx
    pop eax
    out CONTROL_PORT, eax
    ret

; reply: EAX, the whole reply to the request being served.
reply:
    out CONTROL_DATA, eax
    mov eax, RECORD_REPLY
    out CONTROL_PORT, eax
    ret

; serve_control: the host's requests (vm/containers.py), each answered with a reply
; record, until none waits (at most MAX_REQUESTS a call). Keeps EBP.
serve_control:
    push ebp
    mov ebp, MAX_REQUESTS
.next:
    in eax, CONTROL_PORT            ; the next request's operation (0: none)
    test eax, eax
    jz .done
    cmp eax, CONTROL_OPERATIONS
    ja .unknown
    call [control_table + eax*4 - 4]
    jmp .served
.unknown:
    mov eax, -1
    call reply
.served:
    dec ebp
    jnz .next
.done:
    pop ebp
    ret

; container_argument: the request's next argument, a container id -> ECX = its entry
; (0 when there is no such container).
container_argument:
    in eax, CONTROL_DATA
    xor ecx, ecx
    dec eax
    cmp eax, MAX_CONTAINERS
    jae .none
    imul ecx, eax, C_SIZE
    add ecx, containers
    cmp dword [ecx+C_STATE], C_FREE
    jne .done
    xor ecx, ecx
.none:
.done:
    ret

; create(id, weight, memory limit) -> 0, or -1 (the id is taken or out of range, or the
; weight not 1..MAX_WEIGHT)
control_create:
    in eax, CONTROL_DATA
    dec eax
    cmp eax, MAX_CONTAINERS
    jae .bad
    imul edi, eax, C_SIZE
    add edi, containers
    cmp dword [edi+C_STATE], C_FREE
    jne .bad
    inc eax
    push eax
    push edi
    mov ecx, C_SIZE / 4             ; a clean entry
    xor eax, eax
    rep stosd
    pop edi
    pop eax
    mov [edi+C_ID], eax
    in eax, CONTROL_DATA            ; weight
    test eax, eax
    jz .bad
    cmp eax, MAX_WEIGHT
    ja .bad
    mov [edi+C_WEIGHT], eax
    mov [edi+C_CREDIT], eax
    in eax, CONTROL_DATA            ; memory limit, in frames (0: none)
    mov [edi+C_MEM_LIMIT], eax
    mov dword [edi+C_STATE], C_CREATED
    xor eax, eax
    jmp reply
.bad:
    mov eax, -1
    jmp reply

; hostname(id, length, eight dwords of name) -> 0 or -1
control_hostname:
    call container_argument
    test ecx, ecx
    jz .bad
    in eax, CONTROL_DATA
    cmp eax, HOSTNAME_MAX
    ja .bad
    mov [ecx+C_HOSTLEN], eax
    lea edi, [ecx+C_HOSTNAME]
    mov edx, HOSTNAME_MAX / 4
.dword:
    in eax, CONTROL_DATA
    stosd
    dec edx
    jnz .dword
    xor eax, eax
    jmp reply
.bad:
    mov eax, -1
    jmp reply

; start(id, program) -> its init's pid (1), or -1: a created container runs its init, which
; starts the program, as the machine's init does
control_start:
    call container_argument
    test ecx, ecx
    jz .bad
    cmp dword [ecx+C_STATE], C_CREATED
    jne .bad
    in eax, CONTROL_DATA            ; the program
    cmp eax, PROGRAM_COUNT
    jae .bad
    mov [spawn_container], ecx
    mov dword [ecx+C_STATE], C_RUNNING
    inc dword [running_containers]
    push ecx
    xor ebx, ebx                    ; init, told which program to start
    mov ecx, eax
    xor edx, edx
    call create_process
    pop ecx
    cmp eax, 0
    jge reply
    mov dword [ecx+C_STATE], C_STOPPED  ; (no room for its init: it never ran)
    dec dword [running_containers]
    mov dword [ecx+C_EXIT], -1
.bad:
    mov eax, -1
    jmp reply

; exec(id, program, argument) -> the new process's pid in the container, or -1
control_exec:
    call container_argument
    test ecx, ecx
    jz .bad
    cmp dword [ecx+C_STATE], C_RUNNING
    jne .bad
    mov [spawn_container], ecx
    in eax, CONTROL_DATA
    cmp eax, PROGRAM_COUNT
    jae .bad
    mov ebx, eax
    in eax, CONTROL_DATA
    mov ecx, eax
    xor edx, edx                    ; (no parent: nobody waits for it)
    call create_process
    jmp reply
.bad:
    mov eax, -1
    jmp reply

; stop(id) -> 0 or -1: every process of a running container dies (its record follows)
control_stop:
    call container_argument
    test ecx, ecx
    jz .bad
    cmp dword [ecx+C_STATE], C_RUNNING
    jne .bad
    xor eax, eax
    call reply
    mov dword [ecx+C_EXIT], -9
    jmp container_stopped
.bad:
    mov eax, -1
    jmp reply

; stats(id) -> its record, or -1
control_stats:
    call container_argument
    test ecx, ecx
    jz .bad
    mov eax, RECORD_REPLY
    jmp send_record
.bad:
    mov eax, -1
    jmp reply

; destroy(id) -> 0 or -1: a container that is not running gives its id back
control_destroy:
    call container_argument
    test ecx, ecx
    jz .bad
    cmp dword [ecx+C_STATE], C_RUNNING
    je .bad
    mov dword [ecx+C_STATE], C_FREE
    xor eax, eax
    jmp reply
.bad:
    mov eax, -1
    jmp reply
%endif

; ---- page frames -----------------------------------------------------------------------
; alloc_frame -> EAX = a zeroed 4 KiB frame, or 0 when memory is full.
alloc_frame:
    push ecx
    push edi
    mov eax, [free_list]
    test eax, eax
    jz .bump
    mov ecx, [eax]
    mov [free_list], ecx
    jmp .zero
.bump:
    mov eax, [next_frame]
    lea ecx, [eax + 0x1000]
    cmp ecx, [BOOT_MEMORY]
    ja .full
    mov [next_frame], ecx
.zero:
    mov edi, eax
    push eax
    mov ecx, 1024
    xor eax, eax
    rep stosd
    pop eax
    pop edi
    pop ecx
    ret
.full:
    xor eax, eax
    pop edi
    pop ecx
    ret

; free_frame: EAX = a frame to give back.
free_frame:
    mov ecx, [free_list]
    mov [eax], ecx
    mov [free_list], eax
    ret

; ---- the console and panics --------------------------------------------------------------
kputc:
    op console_putc
    ret

kputs:                              ; ESI = a zero-terminated string
    lodsb
    test al, al
    jz .done
    op console_putc
    jmp kputs
.done:
    ret

kputhex:                            ; EAX, as 8 hex digits
    mov ecx, 8
.digit:
    rol eax, 4
    mov edx, eax
    and edx, 15
    mov dl, [hex_digits + edx]
    push eax
    mov al, dl
    op console_putc
    pop eax
    loop .digit
    ret

kputdec:                            ; EAX, unsigned, in decimal
    mov ecx, 10
    xor edx, edx
    div ecx
    test eax, eax
    jz .last
    push edx
    call kputdec
    pop edx
.last:
    mov al, dl
    add al, '0'
    op console_putc
    ret

%ifdef CONTAINERS
%macro kernel_console 0                 ; the kernel's own stream, whoever wrote last
    xor eax, eax
    console_stream
%endmacro
%else
%macro kernel_console 0
%endmacro
%endif

kernel_panic:
    kernel_console
    kprint msg_panic, [ebp+F_VECTOR], kputdec
    kprint msg_error, [ebp+F_ERROR], kputhex
    kprint msg_eip, [ebp+F_EIP], kputhex
    mov esi, msg_cr2
    call kputs
    op read_fault_address
    call kputhex
    kprint msg_regs, [ebp+F_EAX], kputhex
    mov al, ' '
    call kputc
    mov eax, [ebp+F_EBX]
    call kputhex
    mov al, ' '
    call kputc
    mov eax, [ebp+F_ECX]
    call kputhex
    mov al, ' '
    call kputc
    mov eax, [ebp+F_EDX]
    call kputhex
    mov al, 10
    call kputc
    mov al, 2
    op power_off
    op irq_disable
    op safe_halt

panic_message:
    kernel_console
    call kputs
    mov al, 2
    op power_off
    op irq_disable
    op safe_halt

shutdown:
    kernel_console
    mov esi, msg_halt
    call kputs
    xor eax, eax
    op power_off
    op irq_disable
    op safe_halt

%ifdef PARAVIRT_CODE
; ---- paravirtual helpers: the hypercalls behind the ops ---------------------------------
; Page-table updates and context switches are queued and sent together in one multicall:
; one exit for the lot (built with PARAVIRT_UNBATCHED, one hypercall each, to compare).
MC_SIZE   equ 28                    ; a multicall entry: op, five arguments, result
MAX_BATCH equ 8
CONSOLE_LINE equ 128                ; the kernel's console is written a line at a time

pv_force_event:                     ; events unmasked with one pending: let the VMM in
    push eax
    hypercall HYPERVISOR_xen_version
    pop eax
    ret

pv_putc:                            ; AL to the console (sent with the next hypercalls:
    push ebx                        ; every flush sends the kernel's text too, and a user's
    mov ebx, [console_used]         ; write sends it first)
    mov [console_line + ebx], al
    inc ebx
    mov [console_used], ebx
    cmp ebx, CONSOLE_LINE
    jb .done
    call pv_flush
.done:
    pop ebx
    ret

pv_queue_console:                   ; the kernel's console text, queued
    push eax
    push ebx
    push ecx
    push edx
    mov ecx, [console_used]
    test ecx, ecx
    jz .done
    mov eax, HYPERVISOR_console_io
    mov ebx, CONSOLEIO_write
    mov edx, console_line
    call pv_queue
    mov dword [console_used], 0
.done:
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

pv_shutdown:                        ; AL = exit status
    call pv_queue_console           ; (the last of the console before the power goes)
    movzx ecx, al
    mov ebx, SCHEDOP_shutdown
    mov eax, HYPERVISOR_sched_op
    call pv_queue
    jmp pv_flush

pv_queue:                           ; EAX = hypercall, EBX ECX EDX = its arguments
    push edi
    mov edi, [batch_count]
    cmp edi, MAX_BATCH
    jb .room
    call pv_flush                   ; (full: send what is there first)
    xor edi, edi
.room:
    imul edi, edi, MC_SIZE
    add edi, multicall_batch
    mov [edi], eax
    mov [edi + 4], ebx
    mov [edi + 8], ecx
    mov [edi + 12], edx
    inc dword [batch_count]
    pop edi
    ret

pv_request:                         ; EBX = the next request slot (two dwords)
    mov ebx, [batch_count]
    cmp ebx, MAX_BATCH
    jb .room
    call pv_flush
    xor ebx, ebx
.room:
    lea ebx, [pv_requests + ebx*8]
    ret

pv_queue_mmu:                       ; the page-table entry at EDI gets EAX
    push eax
    push ebx
    push ecx
    push edx
    call pv_request
    mov [ebx], edi
    mov [ebx + 4], eax
    mov ecx, 1
    xor edx, edx
    mov eax, HYPERVISOR_mmu_update
    call pv_queue
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

pv_queue_mmuext:                    ; EAX = MMUEXT_ command, EDX = its frame or address
    push eax
    push ebx
    push ecx
    push edx
    call pv_request
    mov [ebx], eax
    mov [ebx + 4], edx
    mov ecx, 1
    xor edx, edx
    mov eax, HYPERVISOR_mmuext_op
    call pv_queue
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

pv_queue_stack_switch:              ; ECX = the kernel stack's top
    push eax
    push ebx
    mov ebx, PV_KERNEL_DATA
    mov eax, HYPERVISOR_stack_switch
    call pv_queue
    pop ebx
    pop eax
    ret

pv_flush:                           ; send what is queued (and the kernel's console text)
    call pv_queue_console
    push eax
    push ebx
    push ecx
    push edx
%ifdef PARAVIRT_UNBATCHED
    push esi
    mov esi, multicall_batch
.next:
    cmp dword [batch_count], 0
    je .sent
    mov eax, [esi]
    mov ebx, [esi + 4]
    mov ecx, [esi + 8]
    mov edx, [esi + 12]
    vmcall
    add esi, MC_SIZE
    dec dword [batch_count]
    jmp .next
.sent:
    pop esi
%else
    mov ecx, [batch_count]
    test ecx, ecx
    jz .sent
    mov ebx, multicall_batch
    hypercall HYPERVISOR_multicall
    mov dword [batch_count], 0
.sent:
%endif
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

pv_clear_pte:                       ; EDI = a PTE to clear, EBX = the page it mapped
    push eax
    push edx
    xor eax, eax
    call pv_queue_mmu
    mov eax, MMUEXT_INVLPG_LOCAL
    mov edx, ebx
    call pv_queue_mmuext
    pop edx
    pop eax
    ret

pv_pin_kernel_tables:               ; the kernel's directory and table: read-only where
    ; they are mapped (the VMM checks: a page table is never writable), then pinned, and
    ; the directory loaded (sent with the rest of boot's hypercalls: start_timer)
    and dword [kernel_page_table + KERNEL_TABLE_PAGE * 4], ~PTE_WRITE
    and dword [kernel_page_table + KERNEL_DIRECTORY_PAGE * 4], ~PTE_WRITE
    mov eax, MMUEXT_PIN_L1_TABLE
    mov edx, kernel_page_table
    call pv_queue_mmuext
    mov eax, MMUEXT_PIN_L2_TABLE
    mov edx, kernel_page_directory
    call pv_queue_mmuext
    mov eax, MMUEXT_NEW_BASEPTR
    jmp pv_queue_mmuext

pv_pin_address_space:               ; EAX = a new process's page directory
    push eax
    push ebx
    push edx
    push edi
    mov ebx, [eax + 4]              ; its user page table
    and ebx, 0xfffff000
    mov edx, eax
    mov edi, eax                    ; both read-only in the kernel's own map ...
    shr edi, 12
    lea edi, [kernel_page_table + edi*4]
    or eax, PTE_PRESENT
    call pv_queue_mmu
    mov eax, ebx
    mov edi, eax
    shr edi, 12
    lea edi, [kernel_page_table + edi*4]
    or eax, PTE_PRESENT
    call pv_queue_mmu
    push edx                        ; ... then pinned: the table, then the directory
    mov edx, ebx
    mov eax, MMUEXT_PIN_L1_TABLE
    call pv_queue_mmuext
    pop edx
    mov eax, MMUEXT_PIN_L2_TABLE
    call pv_queue_mmuext            ; (sent with the next flush: at the latest, the switch
    pop edi                         ; to this process, which needs them pinned)
    pop edx
    pop ebx
    pop eax
    ret

pv_unpin_address_space:             ; EAX = a dying process's page directory
    push eax
    push ebx
    push edx
    push edi
    mov ebx, [eax + 4]              ; its user page table
    and ebx, 0xfffff000
    push eax
    mov eax, MMUEXT_NEW_BASEPTR     ; run on the kernel's own directory
    mov edx, kernel_page_directory
    call pv_queue_mmuext
    pop edx
    mov eax, MMUEXT_UNPIN_TABLE     ; unpin the directory, then the table
    call pv_queue_mmuext
    push edx
    mov edx, ebx
    call pv_queue_mmuext
    pop eax                         ; both writable again in the kernel's map
    mov edi, eax
    shr edi, 12
    lea edi, [kernel_page_table + edi*4]
    or eax, PTE_PRESENT | PTE_WRITE
    call pv_queue_mmu
    mov eax, ebx
    mov edi, eax
    shr edi, 12
    lea edi, [kernel_page_table + edi*4]
    or eax, PTE_PRESENT | PTE_WRITE
    call pv_queue_mmu
    call pv_flush
    pop edi
    pop edx
    pop ebx
    pop eax
    ret
%endif

%ifdef PVOPS
; ---- paravirt_ops: one binary for bare metal and the paravirtual VMM -------------------
; Every op above is a call to its native body. pvops_patch asks CPUID whether it runs
; under vmlab's paravirtual VMM (leaf 1: ECX bit 31, "a hypervisor is here"; leaf
; 0x40000000: which one) and, if so, rewrites each call site to call the op's paravirtual
; body instead. Bare metal answers "no hypervisor" and every site stays as it is.
pvops_patch:
    mov eax, 1
    cpuid
    test ecx, 1 << 31
    jz .native
    mov eax, 0x40000000
    cpuid
    cmp ebx, 'vmla'                 ; "vmlabvmlabPV"
    jne .native
    cmp ecx, 'bvml'
    jne .native
    cmp edx, 'abPV'
    jne .native
    mov esi, pvop_sites
.next:
    lodsd                           ; a call site
    mov edi, eax
    lodsd                           ; and the op's paravirtual body
    test edi, edi
    jz .patched
    sub eax, edi
    sub eax, 5                      ; (relative to the end of the 5-byte CALL or JMP)
    mov [edi + 1], eax
    inc dword [pvops_patched]
    jmp .next
.patched:
    mov byte [pvops_path], 2
    ret
.native:
    mov byte [pvops_path], 1
    ret

; Each op's two bodies as functions (what the call sites call).
%macro op_functions 1
native_%1_op:
    native_%1
    ret
pv_%1_op:
    pv_%1
    ret
%endmacro
    op_functions load_segments
    op_functions install_traps
    op_functions prepare_entry
    op_functions load_task_register
    op_functions enable_paging
    op_functions start_timer
    op_functions irq_enable
    op_functions irq_disable
    op_functions save_flags
    op_functions restore_flags
    op_functions safe_halt
    op_functions syscall_entered
    op_functions end_of_interrupt
    op_functions return_from_interrupt
    op_functions console_putc
    op_functions console_write
    op_functions set_kernel_stack
    op_functions load_cr3
    op_functions set_user_pte
    op_functions clear_user_pte
    op_functions leave_lazy_mmu
    op_functions new_address_space
    op_functions release_address_space
    op_functions read_fault_address
    op_functions power_off
%endif

; Everything above is code, everything below data (a VMM's scanner reads the kernel's
; text from start to text_end, as a loader would read an ELF's .text section).
text_end:

; ---- data ------------------------------------------------------------------------------
isr_table:
    dd isr0, isr1, isr2, isr3, isr4, isr5, isr6, isr7, isr8, isr9
    dd isr10, isr11, isr12, isr13, isr14, isr15, isr16, isr17, isr18, isr19
syscall_table:
    dd sys_exit, sys_write, sys_getpid, sys_yield, sys_sleep, sys_spawn, sys_wait
    dd sys_map, sys_unmap
%ifdef CONTAINERS
    dd sys_kill, sys_sethostname, sys_gethostname
%endif
SYSCALLS equ ($ - syscall_table) / 4
%ifdef CONTAINERS
control_table:                      ; the host's requests, by operation (1 = create)
    dd control_create, control_hostname, control_start, control_exec, control_stop
    dd control_stats, control_destroy
CONTROL_OPERATIONS equ ($ - control_table) / 4
%endif

gdt:
    dd 0, 0
    dd 0x0000ffff, 0x00cf9a00       ; 0x08 ring 0 code
    dd 0x0000ffff, 0x00cf9200       ; 0x10 ring 0 data
    dd 0x0000ffff, 0x00cffa00       ; 0x18 ring 3 code
    dd 0x0000ffff, 0x00cff200       ; 0x20 ring 3 data
gdt_tss:
    dd 0x00000067, 0x00008900       ; 0x28 TSS (base filled in by build_tss)
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
idt_pointer:
    dw 0x81 * 8 - 1
    dd idt

hex_digits:     db "0123456789abcdef"
msg_boot:       db "toyos: booting", 10, 0
msg_halt:       db "toyos: halt", 10, 0
msg_no_memory:  db "PANIC: out of memory", 10, 0
msg_panic:      db "PANIC: kernel exception ", 0
msg_error:      db " error ", 0
msg_eip:        db " at eip ", 0
msg_cr2:        db " cr2 ", 0
msg_regs:       db 10, "eax ebx ecx edx: ", 0
msg_killed_1:   db "toyos: process ", 0
msg_killed_2:   db " killed by exception ", 0
msg_killed_3:   db " at eip ", 0

ticks:          dd 0
last_pid:       dd 0
current:        dd 0
next_frame:     dd 0
free_list:      dd 0
dead_stack:     dd 0
procs:          times MAX_PROCS * P_SIZE db 0
%ifdef CONTAINERS
containers:     times MAX_CONTAINERS * C_SIZE db 0
running_containers: dd 0
stream:         dd 0                ; the console stream the port was told last
spawn_container: dd 0               ; the container create_process puts a process in
procs_end:      dd procs + P_SIZE   ; past the highest slot used (the idle loop's, at first)
proc_slots:     dd 1                ; slots up to there
%endif
tss:            times 0x68 db 0
%ifdef PVOPS
pvop_sites:     dd PVOP_SITES       ; (call site, paravirtual body) pairs, then 0, 0
pvops_patched:  dd 0                ; how many sites pvops_patch rewrote
pvops_path:     db 0                ; 0 not decided yet, 1 native, 2 paravirtual
%endif
%ifdef PARAVIRT_CODE
    align 16
vcpu_info:      db 0, 1, 0, 0       ; pending, mask (events masked until the idle loop)
                dd 0, 0, 0          ; pending channels, CR2, (padding)
trap_table:     times 22 * 8 db 0
console_used:   dd 0
console_line:   times CONSOLE_LINE db 0
batch_count:    dd 0
multicall_batch: times MAX_BATCH * MC_SIZE db 0
pv_requests:    times MAX_BATCH * 8 db 0
%endif

    times (4096 - ($ - $$) % 4096) % 4096 db 0    ; page-align (org is page-aligned)
kernel_page_directory: times 1024 dd 0
kernel_page_table:     times 1024 dd 0
KERNEL_DIRECTORY_PAGE  equ (kernel_page_directory - $$ + KERNEL_ORIGIN) >> 12
KERNEL_TABLE_PAGE      equ (kernel_page_table - $$ + KERNEL_ORIGIN) >> 12
idt:                   times 0x81 * 8 db 0
kernel_end:
